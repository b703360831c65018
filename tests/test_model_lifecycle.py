"""New versions are loaded, warmed up and swapped in under load; broken ones are
refused while the serving version goes on."""

import itertools
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from camserve.client import Client
from camserve.server.ops.process import ServerProcess
from tests import models
from tests.waiting import eventually


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
    # Four callers: batches of up to 4, from a ladder of two sizes (each size is an XLA compile
    # per signature in every version's warm-up). No drain is tested here: no shutdown delay.
    batching = ("--max-batch-size", "4", "--allowed-batch-sizes", "1", "4")
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", "0.3", *batching, "--shutdown-delay", "0")
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
        eventually(lambda: len(outcomes) >= 8)  # the load is on version 1
        publish(v2, repo, "m", 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(o == 2 for _, o in outcomes[-8:]):
            time.sleep(0.2)
        # A broken version: metadata present, SavedModel garbage.
        broken = repo / "m" / ".staging-3"
        shutil.copytree(v2, broken)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(repo / "m" / "3")
        with Client(server.target, model="m") as watcher:  # still under load: 3 refused, 1 retired
            eventually(lambda: state(watcher, "m", 3) == "UNAVAILABLE" and "retired m version 1" in server.log.read_text())
        stop.set()
        for t in threads:
            t.join()
        with Client(server.target, model="m") as client:
            served = [(m.name, m.version, m.state) for m in client.list_models()]
            refused = client.get_model("m", 3)
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
    assert served == [("m", 2, "AVAILABLE"), ("m", 3, "UNAVAILABLE")], "version 1 is retired, 3 refused"
    assert "saved_model.pb" in refused.state_reason or "SavedModel" in refused.state_reason, refused.state_reason
    assert "refused m version 3" in log and "retired m version 1" in log


MARKERS = itertools.count()


def passes(server, repo, count: int = 2):
    """Returns once the server's repository watcher has made `count` whole passes that
    began after the call, rather than sleeping for as many poll intervals (a slow machine
    makes fewer): a pass logs a model folder without versions the first time it sees one,
    after the models before it by name, so each pass is marked by an empty folder made for
    it and named to come last (and never used again: a name is logged once)."""
    for _ in range(count):
        marker = repo / f"zz-pass-{next(MARKERS)}"
        marker.mkdir()
        try:
            assert eventually(lambda: f"{marker.name}: no versions under" in server.log.read_text()), f"no pass saw {marker}"
        finally:
            marker.rmdir()


def state(client, name, version=0):
    """The version's state, or the status code when GetModel refuses."""
    try:
        return client.get_model(name, version).state
    except grpc.RpcError as err:
        return err.code()


class Load:
    """Callers that explain in a loop and record (time, version or status code)."""

    def __init__(self, target, model, callers=3):
        self.outcomes, self.stop = [], threading.Event()
        self.image = np.random.default_rng(1).integers(0, 256, (models.SIZE, models.SIZE, 3), dtype=np.uint8)
        self.threads = [threading.Thread(target=self._run, args=(target, model)) for _ in range(callers)]
        for t in self.threads:
            t.start()

    def _run(self, target, model):
        with Client(target, model=model, retries=0) as client:
            while not self.stop.is_set():
                try:
                    self.outcomes.append((time.monotonic(), client.explain(self.image, timeout=30).version))
                except grpc.RpcError as err:
                    self.outcomes.append((time.monotonic(), err.code()))

    def latest(self):
        return self.outcomes[-1][1] if self.outcomes else None

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return [o for _, o in self.outcomes]


def test_deleting_the_newest_version_rolls_back_and_a_fixed_version_is_retried(exports, tmp_path):
    v1, *_ = exports.get("functional")
    v2, *_ = exports.get("softmax_layer")
    repo = tmp_path / "repo"
    publish(v1, repo, "m", 1)
    publish(v2, repo, "m", 2)
    poll = 0.5
    # Batching is not what this test is about: one batch size to compile per version loaded.
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", str(poll), "--max-batch-size", "1", "--shutdown-delay", "0")
    load = None
    try:
        server.wait_for("SERVING")
        load = Load(server.target, "m")
        assert eventually(lambda: load.latest() == 2)
        shutil.rmtree(repo / "m" / "2")
        assert eventually(lambda: load.latest() == 1), "deleting version 2 rolls back to version 1"
        passes(server, repo)  # more passes: version 1 must stay, not be reloaded
        outcomes = load.finish()

        # A half-copied version is refused, then served once its folder is complete.
        broken = repo / "m" / "3"
        shutil.copytree(v2, broken)
        (broken / "saved_model.pb").write_bytes(b"half copied")
        with Client(server.target, model="m") as client:
            assert eventually(lambda: state(client, "m", 3) == "UNAVAILABLE")
            assert client.explain(load.image).version == 1
            assert server.metric("camserve_model_version_state", model="m", version="3", state="UNAVAILABLE") == 1
            passes(server, repo)  # unchanged, it is not tried again
            shutil.copy(v2 / "saved_model.pb", broken / "saved_model.pb")
            assert eventually(lambda: client.explain(load.image).version == 3), server.log_tail()
            assert client.get_model("m", 1).state == "END"
    finally:
        if load:
            load.finish()
        server.terminate()
    log = server.log.read_text()
    assert not [o for o in outcomes if not isinstance(o, int)], "no request fails during the rollback"
    assert outcomes[-1] == 1 and set(outcomes) == {1, 2}
    assert log.count("loading m version 1 ") == 1, "no reload loop"
    assert log.count("retired m version 1") == 1 and "retired m version 2" in log
    assert log.count("loading m version 3 ") == 2, "the refused version is tried once, and once more after the fix"


def test_models_follow_their_folders_and_config(exports, tmp_path):
    a, *_ = exports.get("functional")
    repo = tmp_path / "repo"
    for name in ("a", "b", "bad"):
        publish(a, repo, name, 1)
    # b below the server's 4, then raised to 2: every size of its ladders is compiled at each load.
    (repo / "b" / "config.json").write_text('{"max_batch_size": 1, "default_method": "gradcam++"}')
    (repo / "bad" / "config.json").write_text('{"max_batch_size": 0}')
    poll = 0.3
    server = ServerProcess(repo, tmp_path / "server.log", "--poll-seconds", str(poll), "--max-batch-size", "4", "--shutdown-delay", "0")
    image = np.zeros((models.SIZE, models.SIZE, 3), np.uint8)
    try:
        server.wait_for("SERVING")
        with Client(server.target) as client:
            assert list(client.get_model("a").batch_sizes) == [1, 2, 4]
            assert list(client.get_model("b").batch_sizes) == [1]
            assert client.explain(image, model="b").method == "gradcam++"
            bad = client.get_model("bad")
            assert bad.state == "UNAVAILABLE" and "max_batch_size must be a number >= 1, got 0" in bad.state_reason
            with pytest.raises(grpc.RpcError) as err:
                client.explain(image)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name the model" in err.value.details()

            # A changed config is read again; a bad one keeps the last good one.
            (repo / "b" / "config.json").write_text('{"max_batch_size": 2}')
            assert eventually(lambda: list(client.get_model("b").batch_sizes) == [1, 2])
            assert client.explain(image, model="b").method == "gradcam"
            (repo / "b" / "config.json").write_text('{"max_batch_size": "many"}')
            assert eventually(lambda: "got 'many'" in server.log.read_text()), "the bad config is read"
            passes(server, repo, 1)
            assert list(client.get_model("b").batch_sizes) == [1, 2]

            # A folder that lists empty for one pass (a sync in progress) is left alone: put back
            # once a pass has seen it gone, two passes before the third would unload it...
            (repo / "a").rename(repo / ".a-moving")
            assert eventually(lambda: f"a: no versions under {repo / 'a'}" in server.log.read_text()), "no pass saw a gone"
            (repo / ".a-moving").rename(repo / "a")
            passes(server, repo)
            assert client.explain(image, model="a").version == 1
            # ...one that stays gone is unloaded.
            shutil.rmtree(repo / "a")
            assert eventually(lambda: state(client, "a") == "END")
            with pytest.raises(grpc.RpcError) as err:
                client.explain(image, model="a")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.terminate()
    log = server.log.read_text()
    assert "unloading the model" in log and log.count("loading a version 1 ") == 1
    assert "max_batch_size must be a number >= 1, got 'many'" in log


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-batch-size", "0"], "max batch size must be at least 1, got 0"),
        (["--max-enqueued", "0"], "max enqueued must be at least 1"),
        (["--allowed-batch-sizes", "1", "3", "--max-batch-size", "4"], "largest allowed batch size (3) must equal the max batch size (4)"),
        (["--version-policy", "specific"], "needs the versions to serve"),
    ],
)
def test_bad_flags_are_refused_with_a_message(tmp_path, capsys, flags, message):
    from camserve.cli import main

    assert main(["serve", "--repo", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_loaded_model_is_kept_out_of_the_collectors_passes(server_repo):
    """A full pass of Python's cyclic collector walks every tracked object: with TensorFlow
    and a model loaded, hundreds of thousands, and the event loop stalls for it (about
    165 ms) every few JSON requests. Once a version is loaded, what it allocated is frozen
    (ops/heap.py): the passes see only what requests allocate since."""
    import asyncio
    import gc

    from camserve.server.models.config import ModelConfig
    from camserve.server.models.lifecycle import ModelManager
    from camserve.server.models.registry import Registry
    from camserve.server.models.sources import RepoSources
    from camserve.server.ops.observer import Observer

    async def main():
        manager = ModelManager(RepoSources(server_repo), ModelConfig(), Registry(), "/CPU:0", Observer())
        try:
            await manager.sync()
            return len(manager.registry.all()), gc.get_freeze_count(), len(gc.get_objects())
        finally:
            await manager.close()

    gc.unfreeze()
    try:
        loaded, frozen, walked = asyncio.run(main())
    finally:
        gc.unfreeze()
    assert loaded == 1
    assert frozen > 10 * walked, f"{frozen} objects frozen, {walked} still walked by every full pass"
