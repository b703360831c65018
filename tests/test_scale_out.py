"""Three replicas on loopback behind the client's round-robin balancing: under a
load of 1 MB images, one drains (SIGTERM) and one is killed outright, and no
request fails (retries replay the whole message; health checks route away
from the draining one)."""

import signal
import threading

import grpc
import numpy as np

from camserve.client import Client
from camserve.server.ops.process import ServerProcess
from tests import models
from tests.waiting import eventually


def test_draining_and_killing_replicas_under_load_fails_no_request(server_repo, tmp_path):
    # Four callers, one call each at a time: no batch exceeds 4. A ladder of 1 and 4 still
    # drains and loses batches of several calls; each further size is one more XLA compile
    # in every replica's warm-up (the default ladder, 1 to 32, was most of this test's time).
    batching = ("--max-batch-size", "4", "--allowed-batch-sizes", "1", "4")
    replicas = [ServerProcess(server_repo, tmp_path / f"replica{i}.log", *batching) for i in range(3)]
    # 1 MB of raw pixels: four times gRPC's default retry buffer.
    image = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    outcomes, stop = [], threading.Event()

    def load(c):
        while not stop.is_set():
            try:
                c.explain(image, timeout=20)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                outcomes.append(err.code())

    try:
        for replica in replicas:
            replica.wait_for("SERVING")
        with Client([r.target for r in replicas], model="tiny", retries=4) as client:
            threads = [threading.Thread(target=load, args=(client,)) for _ in range(4)]
            for t in threads:
                t.start()
            eventually(lambda: all(r.metric("camserve_requests_total", model="tiny") > 0 for r in replicas))
            spread = [r.metric("camserve_requests_total", model="tiny") for r in replicas]
            replicas[0].process.send_signal(signal.SIGTERM)  # drain: health NOT_SERVING, then refusals
            assert eventually(lambda: replicas[0].health() != "SERVING", 30), "the first replica drains"
            replicas[1].process.kill()  # no drain, no goodbye, while the first drains
            before_kill = len(outcomes)
            # Until the draining replica has gone through its refusals and exited, and the load
            # has gone on on the survivor well after both are gone.
            eventually(lambda: replicas[0].process.poll() is not None)
            after_drain = len(outcomes)
            eventually(lambda: len(outcomes) > max(after_drain, before_kill) + 20)
            stop.set()
            for t in threads:
                t.join()
        survivor = replicas[2].metric("camserve_requests_total", model="tiny")
        drained = replicas[0].process.wait(60)
    finally:
        stop.set()
        for replica in replicas:
            replica.terminate()
    assert all(count > 0 for count in spread), f"round robin should reach every replica: {spread}"
    assert len(outcomes) > before_kill + 20, "load went on after the kill"
    failures = [o for o in outcomes if o != grpc.StatusCode.OK]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {set(failures)}"
    assert survivor > spread[2] and drained == 0
