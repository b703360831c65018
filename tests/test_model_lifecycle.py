"""New versions are loaded, warmed up and swapped in under load; broken ones are
refused while the serving version goes on."""

import shutil
import threading
import time

import grpc
import numpy as np

from camserve.client import Client
from camserve.server.process import ServerProcess
from tests import models


def publish(source, repo, name, version):
    """As export does: copy beside, then one rename."""
    staging = repo / name / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(repo / name / str(version))


def test_hot_swap_under_load_and_broken_versions_refused(exports, tmp_path):
    v1, *_ = exports.get("functional")
    v2, *_ = exports.get("softmax_layer")
    repo = tmp_path / "repo"
    publish(v1, repo, "m", 1)
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", "0.3", "--max-batch-size", "4")
    image = np.random.default_rng(0).integers(0, 256, (models.SIZE, models.SIZE, 3), dtype=np.uint8)
    outcomes, stop = [], threading.Event()

    def load():
        with Client(server.target, model="m", retries=0) as client:
            while not stop.is_set():
                try:
                    outcomes.append((time.monotonic(), client.explain(image, timeout=30).version))
                except grpc.RpcError as err:
                    outcomes.append((time.monotonic(), err.code()))

    try:
        server.wait_for("SERVING")
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        publish(v2, repo, "m", 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(o == 2 for _, o in outcomes[-8:]):
            time.sleep(0.2)
        # A broken version: metadata present, SavedModel garbage.
        broken = repo / "m" / ".staging-3"
        shutil.copytree(v2, broken)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(repo / "m" / "3")
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        with Client(server.target, model="m") as client:
            served = [(m.name, m.version) for m in client.list_models()]
            assert client.explain(image).version == 2
    finally:
        stop.set()
        server.terminate()
    log = server.log.read_text()
    errors = [o for _, o in outcomes if not isinstance(o, int)]
    assert not errors, f"requests failed during the swap: {set(errors)}"
    versions = [o for _, o in outcomes]
    assert versions[0] == 1 and versions[-1] == 2 and 2 in versions
    first_v2 = versions.index(2)
    assert all(v == 2 for v in versions[first_v2 + 8 :]), "once swapped, new requests go to version 2"
    assert served == [("m", 2)], "version 1 is retired"
    assert "refused m version 3" in log and "retired m version 1" in log
