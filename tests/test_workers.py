"""`camserve serve --workers 2`: two full servers on one port behind a supervisor.
Load spreads over both, metrics are their sum, answers equal a lone server's,
a killed worker is replaced while the other serves, new versions reach every
worker, SIGTERM drains both, and no worker outlives its supervisor. The
supervisor keeps no secret on disk and removes its state folder when it exits;
one it could not remove (it was SIGKILLed) goes at the next start."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
import pytest

from camserve.client import Client
from camserve.server.ops.process import ServerProcess
from tests.waiting import eventually

IMAGE = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
TOKEN = secrets.token_hex(16)  # random, so no other process holds it by chance


def workers_of(process: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def state_folder(process: ServerProcess) -> Path:
    """The supervisor's state folder: its workers' PROMETHEUS_MULTIPROC_DIR is in it."""
    environ = Path(f"/proc/{workers_of(process.process)[0]}/environ").read_bytes().split(b"\0")
    metrics = next(v for k, _, v in (e.partition(b"=") for e in environ) if k == b"PROMETHEUS_MULTIPROC_DIR")
    return Path(os.fsdecode(metrics)).parent


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def repo(server_repo, tmp_path_factory):
    """A copy of `tiny` that tests may add versions to."""
    copy = tmp_path_factory.mktemp("workers") / "repo"
    shutil.copytree(server_repo, copy)
    return copy


@pytest.fixture(scope="module")
def pair(repo, tmp_path_factory):
    process = ServerProcess(
        repo, tmp_path_factory.mktemp("logs") / "workers.log", "--workers", "2", "--max-batch-size", "4", "--poll-seconds", "0.5"
    )
    process.wait_for("SERVING")
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def guarded(server_repo, tmp_path_factory):
    """`--workers 2` with a bearer token."""
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "token").write_text(TOKEN)
    process = ServerProcess(
        server_repo, folder / "guarded.log", "--workers", "2", "--max-batch-size", "1", "--auth-token-file", str(folder / "token")
    )
    process.wait_for("SERVING")
    yield process
    process.terminate()


def probe(target: str) -> str | None:
    """A health check on a new connection, as kubelet's gRPC probe makes one (a
    long-lived channel may still hold the connection of a worker just killed; so
    may gRPC's global subchannel pool, hence a local one), retried as a probe's
    failureThreshold allows: while the kernel tears a killed worker down, new
    connections that hash to its listening socket are reset (SO_REUSEPORT;
    net.ipv4.tcp_migrate_req=1 hands them to a live worker instead)."""
    for _ in range(5):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError:
                time.sleep(0.2)
    return None


def available(process, version="1") -> float:
    return process.metric("camserve_model_version_state", model="tiny", version=version, state="AVAILABLE")


def test_both_workers_answer_alike_and_their_metrics_add_up(pair, server):
    assert len(workers_of(pair.process)) == 2
    assert available(pair) == 2  # one AVAILABLE per worker
    ok_before = pair.metric("camserve_requests_total", model="tiny", code="OK")
    with Client(server.target, model="tiny") as lone:
        want = lone.explain(IMAGE, return_scores=True)
    # 16 connections taken in turn, each reaching one worker: all on one has odds 2**-15.
    with Client(pair.target, model="tiny", connections=16) as client:
        answers = [client.explain(IMAGE, return_scores=True) for _ in range(16)]
    for got in answers:
        np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-6)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    per_worker = [pair.metric("camserve_worker_calls_total", worker=str(i)) for i in (0, 1)]
    assert all(n > 0 for n in per_worker), f"16 connections should reach both workers: {per_worker}"
    assert pair.metric("camserve_requests_total", model="tiny", code="OK") - ok_before == 16


def test_http_shares_the_port_and_its_metrics_are_the_sum(pair, server):
    import http.client
    import json

    from prometheus_client.parser import text_string_to_metric_families

    body = json.dumps({"inputs": [{"name": "images", "shape": [1, *IMAGE.shape], "datatype": "UINT8", "data": IMAGE.ravel().tolist()}]})
    before = [pair.metric("camserve_worker_calls_total", worker=str(i)) for i in (0, 1)]
    answers = []
    for _ in range(16):  # a new connection each: the kernel spreads them over the workers
        connection = http.client.HTTPConnection("127.0.0.1", pair.http_port, timeout=30)
        connection.request("POST", "/v2/models/tiny/infer", body=body)
        response = connection.getresponse()
        assert response.status == 200
        answers.append(json.loads(response.read()))
        connection.close()
    heatmaps = {tuple(np.round({o["name"]: o for o in a["outputs"]}["heatmap"]["data"], 5)) for a in answers}
    assert len(heatmaps) == 1
    after = [pair.metric("camserve_worker_calls_total", worker=str(i)) for i in (0, 1)]
    assert all(b > a for a, b in zip(before, after)), f"16 connections should reach both workers: {before} -> {after}"
    connection = http.client.HTTPConnection("127.0.0.1", pair.http_port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    calls = [sum(v for (n, labels), v in scraped.items() if n == "camserve_worker_calls_total" and ("worker", str(i)) in labels) for i in (0, 1)]
    assert calls == [pair.metric("camserve_worker_calls_total", worker=str(i)) for i in (0, 1)]


def test_a_killed_worker_is_replaced_while_the_other_serves(pair):
    """Calls and probes from the kill until a new worker serves (and 20 calls at least),
    rather than for 3 s: all succeed."""
    victim = workers_of(pair.process)[0]
    outcomes = []

    def replaced() -> bool:
        return victim not in workers_of(pair.process) and len([p for p in workers_of(pair.process) if alive(p)]) == 2 and available(pair) == 2

    with Client(pair.target, model="tiny", retries=4) as client:
        client.explain(IMAGE)
        subprocess.run(["kill", "-9", str(victim)], check=True)

        def served_until_replaced() -> bool:
            try:
                client.explain(IMAGE, timeout=10)
                outcomes.append("OK")
            except grpc.RpcError as err:
                outcomes.append(err.code().name)
            assert probe(pair.target) == "SERVING"
            return len(outcomes) >= 20 and replaced()

        assert eventually(served_until_replaced, 90, every=0), "a new worker"
    assert set(outcomes) == {"OK"}, outcomes


def test_a_new_version_reaches_every_worker(pair, repo):
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    assert eventually(lambda: available(pair, "2") == 2, 90), "version 2 on both workers"
    for _ in range(4):
        with Client(pair.target, model="tiny") as client:
            assert client.explain(IMAGE).version == 2


def test_sigterm_drains_every_worker_and_removes_the_state_folder(pair):
    workers = workers_of(pair.process)
    state = state_folder(pair)
    outcomes = []

    def caller():
        with Client(pair.target, model="tiny", retries=0) as client:
            for _ in range(30):
                try:
                    client.explain(IMAGE, timeout=20)
                    outcomes.append("OK")
                except grpc.RpcError as err:
                    outcomes.append(err.code().name)
                    return

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    assert eventually(lambda: outcomes.count("OK") >= 4, 60), "the callers are under way"
    pair.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert pair.process.wait(60) == 0
    assert outcomes.count("OK") >= 4 and set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert not any(alive(pid) for pid in workers)
    assert not state.exists()


def test_the_token_reaches_the_workers_through_no_file_argv_or_environment(guarded):
    with Client(guarded.target, model="tiny", token=TOKEN, retries=0) as client:
        client.explain(IMAGE)
    with Client(guarded.target, model="tiny", retries=0) as client, pytest.raises(grpc.RpcError) as denied:
        client.explain(IMAGE)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    state = state_folder(guarded)
    assert [p.relative_to(state) for p in state.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()] == []
    leaks = []
    for proc in Path("/proc").glob("[0-9]*"):
        for part in ("cmdline", "environ"):
            try:
                if TOKEN.encode() in (proc / part).read_bytes():
                    leaks.append(f"{proc}/{part}")
            except OSError:  # a process that has gone, or another user's
                pass
    assert leaks == []


def test_the_state_folder_goes_after_a_worker_is_killed_and_the_server_stopped(guarded):
    state = state_folder(guarded)
    victim = workers_of(guarded.process)[0]
    with Client(guarded.target, model="tiny", token=TOKEN, retries=4) as client:
        os.kill(victim, signal.SIGKILL)
        # A killed process is alive until the kernel has taken it down: counted too soon, it is
        # one of "2 alive", and SIGTERM reaches the supervisor before it saw the death (exit -9).
        assert eventually(lambda: not alive(victim), 90), "the killed worker gone"
        client.explain(IMAGE, timeout=10)  # the other worker
        assert eventually(
            lambda: victim not in workers_of(guarded.process) and len([p for p in workers_of(guarded.process) if alive(p)]) == 2
            and available(guarded) == 2,
            90,
        ), "a new worker"
        client.explain(IMAGE, timeout=10)
    guarded.process.send_signal(signal.SIGTERM)
    assert guarded.process.wait(60) == 0
    assert not state.exists()


def test_workers_do_not_outlive_their_supervisor_whose_folder_goes_at_the_next_start(server_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the servers' temporary folders, and only theirs
    process = ServerProcess(server_repo, tmp_path / "orphans.log", "--workers", "2", "--max-batch-size", "1")
    try:
        process.wait_for("SERVING")
        workers, state = workers_of(process.process), state_folder(process)
        process.process.kill()
        assert eventually(lambda: not any(alive(pid) for pid in workers), 30), "workers to exit"
    finally:
        process.terminate()
    assert state.exists()  # nothing could remove it
    after = ServerProcess(server_repo, tmp_path / "after.log", "--workers", "2", "--max-batch-size", "1")
    try:
        assert eventually(lambda: not state.exists(), 30), "the next start to remove the dead supervisor's folder"
        # Stopped while its workers start (it handles SIGTERM from then on), it too removes its folder.
        assert eventually(lambda: len(workers_of(after.process)) == 2, 30), "the next start's workers"
    finally:
        after.terminate()
    assert list(tmp_path.glob("camserve-*")) == []


def test_a_worker_that_cannot_start_stops_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    (tmp_path / "empty").mkdir()
    process = ServerProcess(tmp_path / "empty", tmp_path / "empty.log", "--workers", "2")
    try:
        code = process.process.wait(120)
    finally:
        process.terminate()
    assert code != 0
    assert "could be loaded" in process.log.read_text()
    assert list(tmp_path.glob("camserve-*")) == []


def test_workers_need_a_port_number(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "camserve", "serve", "--repo", str(tmp_path), "--workers", "2", "--port", "0"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "--workers shares one port" in result.stderr

