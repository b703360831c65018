"""Start-up, overload, deadlines and shutdown of a real server process, on a
model slow enough (about 10 ms an image) for queues to build."""

import asyncio
import base64
import functools
import json
import threading
import time

import grpc
import keras
import numpy as np
import pytest
from keras import layers

from camserve.client import AsyncClient, Client
from camserve.server.ops.process import ServerProcess

SIZE = 96


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory):
    from camserve.export.exporter import ExportOptions, export

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for _ in range(3):
        x = layers.Conv2D(48, 3, padding="same", activation="relu")(x)
    outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    root = tmp_path_factory.mktemp("slow")
    keras.Model(inputs, outputs).save(root / "slow.keras")
    export(ExportOptions(source=str(root / "slow.keras"), repo=str(root / "repo"), name="slow", preprocess="scale"))
    return root / "repo"


@pytest.fixture(scope="module")
def strict(slow_repo, tmp_path_factory):
    """One request a batch, at most 16 waiting, a stream may have 16 in flight;
    readiness and liveness are watched from the first moment; metrics on another
    loopback address than gRPC."""
    process = ServerProcess(
        slow_repo,
        tmp_path_factory.mktemp("logs") / "strict.log",
        *("--max-batch-size", "1", "--max-enqueued", "16", "--stream-window", "16", "--shutdown-delay", "1.5", "--drain-timeout", "20"),
        *("--max-message-mb", "1", "--max-pixels", "500000"),
        metrics_host="127.0.0.2",
    )
    seen, live_while_warming = [], set()
    while process.process.poll() is None and "SERVING" not in seen:
        status = process.health()
        if status == "NOT_SERVING":
            live_while_warming.add(process.health("camserve.liveness"))
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        time.sleep(0.02)
    process.seen_at_start, process.live_while_warming = seen, live_while_warming
    yield process
    process.terminate()


IMAGE = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def flood(target, count, timeout):
    """`count` concurrent requests; their status codes."""

    async def main():
        async with AsyncClient(target, model="slow", retries=0) as client:

            async def one():
                try:
                    await client.explain(IMAGE, timeout=timeout)
                    return grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as err:
                    return err.code(), err.details()

            return await asyncio.gather(*(one() for _ in range(count)))

    return asyncio.run(main())


def test_health_is_not_serving_until_warm_up_ends(strict):
    assert strict.seen_at_start == ["NOT_SERVING", "SERVING"]


def test_liveness_stays_serving_through_warm_up(strict):
    """A liveness probe must not restart a pod whose warm-up is slow."""
    assert strict.live_while_warming == {"SERVING"}
    assert strict.health("camserve.liveness") == "SERVING"


def test_metrics_listen_on_the_configured_host(strict):
    import urllib.error
    import urllib.request

    assert strict.metric("camserve_in_flight_requests") >= 0  # read at 127.0.0.2
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{strict.metrics_port}/metrics", timeout=2)


def test_message_and_pixel_limits_are_clear(strict):
    with Client(strict.target, model="slow", retries=0) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.explain(np.zeros((1000, 1000, 3), np.uint8))  # 3 MB message, limit 1 MB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.explain(np.zeros((800, 800), np.uint8))  # 640 kB, but 640 000 pixels
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 500000" in err.value.details()


def test_full_queue_sheds_with_resource_exhausted_and_recovers(strict):
    outcomes = flood(strict.target, 64, timeout=30)
    codes = [code for code, _ in outcomes]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert any("max_enqueued" in details for _, details in outcomes)
    assert strict.metric("camserve_requests_total", code="RESOURCE_EXHAUSTED") >= codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with Client(strict.target, model="slow") as client:
        assert client.explain(IMAGE).class_index >= 0


def tfserving_request():
    """A TF Serving Predict of IMAGE on `slow`'s explain signature, as tensorflow-serving-api builds it."""
    from tests.tfserving_requests import images_request

    return images_request("slow", IMAGE[np.newaxis], "explain")


def tfserving_flood(target, count, timeout):
    """`count` concurrent TF Serving Predict calls; their status codes."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    async def main():
        async with grpc.aio.insecure_channel(target) as channel:
            stub, request = prediction_service_pb2_grpc.PredictionServiceStub(channel), tfserving_request()

            async def one():
                try:
                    await stub.Predict(request, timeout=timeout)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    return err.code()

            return await asyncio.gather(*(one() for _ in range(count)))

    return asyncio.run(main())


def test_tf_servings_api_is_shed_and_cut_at_deadlines_as_the_others_are(strict):
    """Overload is refused before work with RESOURCE_EXHAUSTED, and calls whose deadline
    passes while queued end DEADLINE_EXCEEDED, counted under TF Serving's api."""
    shed = tfserving_flood(strict.target, 64, timeout=30)
    assert set(shed) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(shed)
    late = tfserving_flood(strict.target, 16, timeout=0.08)
    assert grpc.StatusCode.DEADLINE_EXCEEDED in late and set(late) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert strict.metric("camserve_requests_total", api="tfserving", code="RESOURCE_EXHAUSTED") >= shed.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_requests_whose_deadline_passes_in_the_queue_never_run(strict):
    """16 requests of ~10 ms each, one at a time, with an 80 ms deadline: the late
    ones expire while queued, are dropped unrun, and the metrics say so."""
    executed_before = strict.metric("camserve_executed_requests_total", model="slow")
    dropped_before = strict.metric("camserve_dropped_requests_total", model="slow", reason="deadline")
    counted_before = strict.metric("camserve_requests_total", model="slow", code="DEADLINE_EXCEEDED")
    cancelled_before = strict.metric("camserve_requests_total", model="slow", code="CANCELLED")
    outcomes = flood(strict.target, 16, timeout=0.08)
    codes = [code for code, _ in outcomes]
    expired = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert expired > 0 and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    time.sleep(0.5)  # let the batcher reach the expired ones
    # Expiries are counted as such (a call that finished just before the deadline, with its
    # answer still on the wire, is OK to the server: hence not an equality).
    counted = strict.metric("camserve_requests_total", model="slow", code="DEADLINE_EXCEEDED") - counted_before
    cancelled = strict.metric("camserve_requests_total", model="slow", code="CANCELLED") - cancelled_before
    assert 0 < counted <= expired and cancelled == 0
    executed = strict.metric("camserve_executed_requests_total", model="slow") - executed_before
    dropped = strict.metric("camserve_dropped_requests_total", model="slow", reason="deadline") - dropped_before
    assert dropped > 0, "some requests should have expired in the queue"
    assert executed + dropped <= 16  # a dropped request never ran


def test_a_caller_leaving_mid_stream_leaves_no_work_behind(strict):
    """14 images streamed (within max_enqueued and the stream window, so all are in
    flight) at ~10 ms each; the caller hangs up after the first answer: the rest
    are dropped, not run, and nothing stays in flight."""
    executed_before = strict.metric("camserve_executed_requests_total", model="slow")
    cancelled_before = strict.metric("camserve_requests_total", code="CANCELLED")
    with Client(strict.target, model="slow", retries=0) as client:
        stream = client.stub.ExplainStream(
            iter([client._request(IMAGE, request_id=str(i)) for i in range(14)]), timeout=60
        )
        first = next(stream)
        stream.cancel()
    assert first.error.code == 0

    def left_behind():
        return strict.metric("camserve_in_flight_requests") + strict.metric("camserve_queue_depth", model="slow")

    deadline = time.monotonic() + 10  # the batcher drops the abandoned ones as it reaches them
    while time.monotonic() < deadline and left_behind() > 0:
        time.sleep(0.1)
    assert left_behind() == 0
    executed = strict.metric("camserve_executed_requests_total", model="slow") - executed_before
    assert executed < 14, "the abandoned requests should not all have run"
    # Several were in flight when the caller left (a window of 1 would hold one).
    assert strict.metric("camserve_requests_total", code="CANCELLED") - cancelled_before >= 2
    assert strict.health() == "SERVING"


def test_a_failed_image_cancels_its_siblings_before_the_call_ends(strict):
    """A KServe call of 13 images whose first cannot be decoded fails at once with
    INVALID_ARGUMENT; its 12 siblings (~10 ms each, one a batch) are cancelled,
    not run after the call has ended, and nothing stays in flight."""
    import cv2
    import tritonclient.grpc as triton

    executed_before = strict.metric("camserve_executed_requests_total", model="slow")
    good = cv2.imencode(".png", IMAGE)[1].tobytes()
    blobs = np.array([b"not an image", *[good] * 12], dtype=object)
    images = triton.InferInput("image_bytes", [len(blobs)], "BYTES")
    images.set_data_from_numpy(blobs)
    with pytest.raises(triton.InferenceServerException) as err:
        triton.InferenceServerClient(strict.target).infer("slow", [images])
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "is not a JPEG" in err.value.message()
    assert strict.metric("camserve_in_flight_requests") == 0, "the call ended only after its images had"
    time.sleep(0.3)  # what a sibling left running would have done by now: 12 x 10 ms
    executed = strict.metric("camserve_executed_requests_total", model="slow") - executed_before
    assert executed <= 2, f"{executed} images of a failed call ran"


def test_sigterm_finishes_accepted_work_and_exits_zero(strict):
    """Callers keep sending, over gRPC and over HTTP (native, upload and TF Serving's), while the server is told to
    stop: everything sent before the signal succeeds, later calls succeed or are
    refused, health turns NOT_SERVING, and the process exits 0. Refusals are
    UNAVAILABLE (HTTP 503) from camserve; calls that reach gRPC while its listener
    closes come back CANCELLED, never having started (gRPC's own behaviour,
    grpc/grpc#41785), and HTTP calls then find no listener. Readiness turns 503
    over HTTP as health turns NOT_SERVING."""
    import http.client

    import cv2

    outcomes, stop = [], threading.Event()
    signalled = []
    png = cv2.imencode(".png", IMAGE)[1].tobytes()

    def caller():
        with Client(strict.target, model="slow", retries=0) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.explain(IMAGE, timeout=30)
                    outcomes.append((started, grpc.StatusCode.OK))
                except grpc.RpcError as err:
                    outcomes.append((started, err.code()))

    rest = json.dumps({"signature_name": "explain", "instances": [{"b64": base64.b64encode(png).decode()}]})

    def http_caller(path="/camserve/models/slow/explain?heatmap=uint8", body=png):
        while not stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", strict.http_port, timeout=30)
            try:
                connection.request("POST", path, body=body)
                outcomes.append((started, connection.getresponse().status))
            except ConnectionError:
                outcomes.append((started, "no listener"))
                time.sleep(0.05)
            finally:
                connection.close()

    def tfserving_caller():
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(strict.target) as channel:
            stub, request = prediction_service_pb2_grpc.PredictionServiceStub(channel), tfserving_request()
            while not stop.is_set():
                started = time.monotonic()
                try:
                    stub.Predict(request, timeout=30)
                    outcomes.append((started, grpc.StatusCode.OK))
                except grpc.RpcError as err:
                    outcomes.append((started, err.code()))

    tfserving_rest_caller = functools.partial(http_caller, "/v1/models/slow:predict", rest)
    threads = [threading.Thread(target=target) for target in [caller] * 3 + [tfserving_caller] * 2 + [http_caller] * 2 + [tfserving_rest_caller]]
    for t in threads:
        t.start()
    time.sleep(1.0)
    signalled.append(time.monotonic())
    strict.process.send_signal(15)
    time.sleep(0.3)
    assert strict.health() == "NOT_SERVING"
    probe = http.client.HTTPConnection("127.0.0.1", strict.http_port, timeout=5)
    probe.request("GET", "/v2/health/ready")
    assert probe.getresponse().status == 503  # readiness over HTTP too, while calls are still answered
    probe.close()
    code = strict.process.wait(60)
    stop.set()
    for t in threads:
        t.join()
    assert code == 0, strict.log_tail()
    before = [c for started, c in outcomes if started < signalled[0]]
    assert {grpc.StatusCode.OK, 200} == set(before), before
    after = {c for started, c in outcomes if started >= signalled[0]}
    assert after <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, 200, 503, "no listener"}
    assert grpc.StatusCode.UNAVAILABLE in after, "calls during the drain should be refused UNAVAILABLE"
    # The listener closes once the accepted calls are done, some milliseconds after refusals
    # start: a caller that opens a connection per call may see either.
    assert after & {503, "no listener"}, "HTTP calls after the drain should be refused"


def _http_status(port: int, path: str) -> int | str:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except ConnectionError:
        return "no listener"
    finally:
        connection.close()


def test_an_upload_still_arriving_at_sigterm_is_answered(slow_repo, tmp_path):
    """An HTTP call whose headers came before SIGTERM and whose body comes during the
    drain is answered: the drain waits for its body, and the call is then refused
    503 as a gRPC call whose message comes then is refused UNAVAILABLE. Before,
    the drain counted only calls whose body was in, closed the listener under
    this one, and aiohttp read no more of its body: the caller got 408 once
    --http-body-timeout passed, and the exit waited as long."""
    import socket

    import cv2

    server = ServerProcess(slow_repo, tmp_path / "drain.log", "--shutdown-delay", "0", "--max-concurrent-rpcs", "1", "--http-body-timeout", "5")
    png = cv2.imencode(".png", IMAGE)[1].tobytes()
    try:
        server.wait_for("SERVING")
        upload = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        head = f"POST /camserve/models/slow/explain?heatmap=uint8 HTTP/1.1\r\nHost: camserve\r\nContent-Length: {len(png)}\r\n\r\n"
        upload.sendall(head.encode())
        # The upload holds the one place once its headers are read: other calls get 429.
        while _http_status(server.http_port, "/v2/models/slow") != 429:
            pass
        server.process.send_signal(15)
        # Give a listener that closes under the upload (the bug) a second to do so.
        deadline = time.monotonic() + 1.0
        while _http_status(server.http_port, "/v2/models/slow") != "no listener" and time.monotonic() < deadline:
            pass
        upload.sendall(png)
        answer = upload.makefile("rb").readline().decode()
        upload.close()
        code = server.process.wait(30)
    finally:
        server.terminate()
    assert answer.startswith("HTTP/1.1 503"), answer
    assert code == 0, server.log_tail()


def rss_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_a_burst_of_large_images_is_shed_before_work_within_the_memory_bound(slow_repo, tmp_path):
    """160 calls (20x the queue) of 3 MB images at once: the admitted ones run, the
    rest get RESOURCE_EXHAUSTED before decoding, and the server's memory grows by less than
    the README's bound: max_concurrent_rpcs x max message x 4 (gRPC's transport
    buffers, the bytes, the parsed message, the allocator's slack for each) +
    decode threads x max_pixels x 16 bytes + 64 MB (canvases are negligible here). Before admission came first, this burst grew
    the server by about 600 MB, growing with the burst; while refusals went through
    context.abort, by 263-527 MB (the refused calls' messages kept in grpc's reference
    cycles until the collector ran: pipeline/errors.py's fail)."""
    import cv2

    flags = {"--max-enqueued": 8, "--max-batch-size": 1, "--max-concurrent-rpcs": 16, "--max-message-mb": 4}
    flags |= {"--max-pixels": 1_100_000, "--decode-threads": 2}
    server = ServerProcess(slow_repo, tmp_path / "burst.log", *(str(v) for kv in flags.items() for v in kv))
    noise = np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    png = cv2.imencode(".png", noise)[1].tobytes()
    assert len(png) > 2.5e6

    async def burst():
        async with AsyncClient(server.target, model="slow", retries=0, health_check=False) as client:

            async def one():
                try:
                    await client.explain(png, timeout=60)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    return err.code()

            return await asyncio.gather(*(one() for _ in range(160)))

    try:
        server.wait_for("SERVING")
        pid = server.process.pid
        flood(server.target, 2, timeout=30)  # first calls allocate gRPC's and the decoders' steady state
        open(f"/proc/{pid}/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
        before = rss_kb(pid, "VmRSS")
        outcomes = asyncio.run(burst())
        peak = rss_kb(pid, "VmHWM")
    finally:
        server.terminate()
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(outcomes)
    served, refused = outcomes.count(grpc.StatusCode.OK), outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    # How many are refused depends on how fast one client's connection delivers 480 MB.
    assert served >= 8 and refused >= 16
    bound_mb = 16 * 4 * 4 + 2 * 1_100_000 * 16 / 2**20 + 64
    grown_mb = (peak - before) / 1024
    print(f"burst: {served} served, {refused} refused; RSS grew {grown_mb:.0f} MB (bound {bound_mb:.0f} MB)")
    assert grown_mb < bound_mb
