"""Start-up, overload, deadlines and shutdown of a real server process, on a
model slow enough (about 10 ms an image) for queues to build."""

import asyncio
import base64
import functools
import json
import os
import signal
import threading
import time

import grpc
import keras
import numpy as np
import pytest
from keras import layers

from camserve.client import AsyncClient, Client
from camserve.server.ops.process import ServerProcess
from tests import collector
from tests.waiting import eventually, settle

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
    """Overload is refused before work with RESOURCE_EXHAUSTED, and a call whose deadline
    passes while its images are queued ends DEADLINE_EXCEEDED, counted under TF Serving's
    api: 16 images in one tensor, run one at a time (about 10 ms each here, longer on a
    slower machine), cannot all run within an 80 ms deadline. The call goes through
    Uncancelled, so that the server alone ends it, at its own deadline (tests/uncancelled.py)."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tests.tfserving_requests import images_request
    from tests.uncancelled import Uncancelled

    shed = tfserving_flood(strict.target, 64, timeout=30)
    assert set(shed) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(shed)
    assert strict.metric("camserve_requests_total", api="tfserving", code="RESOURCE_EXHAUSTED") >= shed.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    expired = strict.metric("camserve_requests_total", api="tfserving", code="DEADLINE_EXCEEDED")
    with Uncancelled(strict.target) as proxy, grpc.insecure_channel(proxy.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as late:
            stub.Predict(images_request("slow", np.stack([IMAGE] * 16), "explain"), timeout=0.08)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert settle(strict) == 0
    assert strict.metric("camserve_requests_total", api="tfserving", code="DEADLINE_EXCEEDED") - expired == 1


def deadline_counts(server) -> dict[str, float]:
    return {
        "executed": server.metric("camserve_executed_requests_total", model="slow"),
        "dropped": server.metric("camserve_dropped_requests_total", model="slow", reason="deadline"),
        "ok": server.metric("camserve_requests_total", model="slow", code="OK"),
        "expired": server.metric("camserve_requests_total", model="slow", code="DEADLINE_EXCEEDED"),
        "cancelled": server.metric("camserve_requests_total", model="slow", code="CANCELLED"),
    }


def since(server, before: dict[str, float]) -> dict[str, float]:
    return {name: value - before[name] for name, value in deadline_counts(server).items()}


CODES = {code.value[0]: code for code in grpc.StatusCode}


def explain_many(target: str, requests: list, timeout: float) -> tuple[grpc.StatusCode, list]:
    """One ExplainMany call: its status code, and each answer's (OK when it has no error)."""
    from camserve.v1 import camserve_pb2 as pb
    from camserve.v1 import camserve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            answer = pb_grpc.CamServeStub(channel).ExplainMany(pb.ExplainManyRequest(requests=requests), timeout=timeout)
        except grpc.RpcError as err:
            return err.code(), []
    return grpc.StatusCode.OK, [CODES[r.error.code] for r in answer.responses]


def queued_together(count: int, **options) -> list:
    """`count` requests of IMAGE for one ExplainMany call, each its own: one call's
    requests that ask the same of the same model travel as one block (one item in the
    queue), so each has a background of its own (it lies under transparent pixels, and
    IMAGE has none). The server reads the call and queues all of its requests, in order,
    before the batcher takes the first (raw pixels at the model's size are queued on the
    event loop, each request in the first step of its own task)."""
    from camserve.client.messages import request_message, request_options

    return [request_message(IMAGE, request_options(model="slow", background=i, **options), str(i)) for i in range(count)]


def test_requests_whose_deadline_passes_in_the_queue_never_run(strict):
    """One call of 16 requests, queued together and run one at a time (max batch size 1):
    12 without a deadline of their own, then 4 whose own timeout_ms (5 ms) is far shorter
    than the 12 runs ahead of them (about 10 ms each here, longer on a slower machine). The
    4 wait for those runs whatever the machine's speed, so they are certain to expire in
    the queue: they are dropped unrun and answered and counted DEADLINE_EXCEEDED, while the
    12 run. No gRPC deadline (30 s) races the server's own."""
    before = deadline_counts(strict)
    first, late = queued_together(12), queued_together(16, timeout=0.005)[12:]
    code, answers = explain_many(strict.target, first + late, timeout=30)
    assert code == grpc.StatusCode.OK
    assert answers == [grpc.StatusCode.OK] * 12 + [grpc.StatusCode.DEADLINE_EXCEEDED] * 4, answers
    assert settle(strict) == 0
    counts = since(strict, before)
    assert counts == {"executed": 12, "dropped": 4, "ok": 12, "expired": 4, "cancelled": 0}, counts


def test_calls_whose_grpc_deadline_passes_in_the_queue_never_run(strict):
    """One call of 16 requests, queued together and run one at a time, under a gRPC
    deadline of 50 ms, the server's deadline being the call's: 16 runs take about 160 ms
    here, so the call expires with requests still queued. Those are dropped unrun as
    expired, the ones that were running or queued are counted DEADLINE_EXCEEDED, none
    CANCELLED: every request ran or was dropped; and the call ends DEADLINE_EXCEEDED,
    never OK with its requests' errors inside (it did, on a loaded machine: the next
    test). The call goes through Uncancelled, so that the caller's cancel at its deadline
    does not race the server's own (a server that read the call late would see it early
    and count it CANCELLED; one CI run did, for all 14 of a flood). Whether the deadline
    falls among the 16 runs depends on the machine's speed, so the outcome is read from
    the counts, not assumed: a call the server could not start before its deadline
    (nothing counted: gRPC never runs its handler) is sent again with twice the time, and
    one whose 16 requests all ran before it (nothing dropped: a machine faster than the
    deadline) with half, until one expires among its runs; six calls at most."""
    from tests.uncancelled import Uncancelled

    deadline, calls = 0.05, []
    with Uncancelled(strict.target) as proxy:
        for _ in range(6):
            before = deadline_counts(strict)
            code, _ = explain_many(proxy.target, queued_together(16), timeout=deadline)
            assert settle(strict) == 0
            counts = since(strict, before)
            calls.append((deadline, code.name, counts))
            if counts["ok"] + counts["expired"] + counts["cancelled"] == 0:
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, calls
                deadline *= 2
            elif counts["dropped"] == 0 and counts["cancelled"] == 0:
                deadline /= 2
            else:
                break
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, calls
    assert counts["ok"] + counts["expired"] == 16 and counts["cancelled"] == 0, calls
    assert counts["executed"] + counts["dropped"] == 16 and counts["dropped"] > 0, calls
    assert counts["expired"] >= counts["dropped"], calls


class DeadlineContext:
    """What a handler reads of gRPC's context: a deadline `seconds` away that passes and
    never cancels the handler (gRPC's own cancel at it comes late), and the status set."""

    def __init__(self, seconds: float):
        self.ends, self.code, self.details = time.monotonic() + seconds, None, None

    def time_remaining(self) -> float:
        return max(self.ends - time.monotonic(), 0.0)

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_an_explain_many_past_its_grpc_deadline_is_not_answered_ok(slow_repo):
    """A call's gRPC deadline is each of its requests', and two clocks keep it: the
    pipeline's (each request answered DEADLINE_EXCEEDED in band as it passes) and gRPC's,
    which cancels the handler. When the pipeline's came first, the call was answered OK
    after its deadline, its requests' errors inside, and a caller whose own timer was late
    too took it: the test above got OK in a loaded full run, and 3 of 40 such calls did on
    one loaded core (each with 15 requests DEADLINE_EXCEEDED, 1 OK; the server's answer
    sent 1-8 ms after the deadline). Here in process, with a context whose deadline passes
    and that never cancels, and the slow model held until the call has ended, so that
    whatever the machine's speed its requests are queued or running when it passes."""
    from concurrent.futures import ThreadPoolExecutor

    from camserve.server.models.config import ModelConfig
    from camserve.server.models.registry import Registry
    from camserve.server.models.served import ServedModel
    from camserve.server.ops.observer import Observer
    from camserve.server.pipeline.batcher import BatchingOptions
    from camserve.server.pipeline.explain import Pipeline
    from camserve.server.pipeline.limits import Limits
    from camserve.server.transports.grpc.native import CamServeService
    from camserve.v1 import camserve_pb2 as pb

    batching = BatchingOptions(max_batch_size=1, max_enqueued=16)
    model = ServedModel(slow_repo / "slow" / "1", "/device:CPU:0", ModelConfig(batching, warm_up=False), Observer())
    gate, run = threading.Event(), model.batcher.run_batch
    model.batcher.run_batch = lambda *batch: gate.wait(60) and run(*batch)
    registry = Registry()
    registry.add(model)
    context = DeadlineContext(0.05)

    async def call():
        model.batcher.start()
        with ThreadPoolExecutor(1) as decoders:
            service = CamServeService(registry, Pipeline(registry, decoders, Limits(stream_window=16), Observer()))
            try:
                return await service.ExplainMany(pb.ExplainManyRequest(requests=queued_together(16)), context)
            finally:
                gate.set()
                await model.batcher.stop()

    try:
        answer = asyncio.run(call())
    finally:
        gate.set()
        model.close()
    in_band = answer and [CODES[r.error.code].name for r in answer.responses]
    assert answer is None and context.code == grpc.StatusCode.DEADLINE_EXCEEDED, (context.code, in_band)


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

    assert settle(strict) == 0
    executed = strict.metric("camserve_executed_requests_total", model="slow") - executed_before
    assert executed < 14, "the abandoned requests should not all have run"
    # Several were in flight when the caller left (a window of 1 would hold one).
    assert strict.metric("camserve_requests_total", code="CANCELLED") - cancelled_before >= 2
    assert strict.health() == "SERVING"


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_a_failed_explain_many_call_cancels_the_calls_still_in_flight(strict, client_kind):
    """explain_many of 33 small images, 17 to a call and two calls in flight: the first
    call is beyond the server's 16 requests a call (INVALID_ARGUMENT as soon as it is
    read), and its failure is raised; the second (16 images, ~10 ms each, one a batch)
    is cancelled, not left to run after the caller has its error (it was: a later test
    of test_server.py counted such calls as its own). Small images, so that neither
    call's bytes delay the other's."""
    before = deadline_counts(strict)
    images = [IMAGE[:8, :8]] * 33
    # The client stays open meanwhile: closing its channel would cancel the calls anyway.
    with collector.frozen():
        if client_kind == "sync":
            with Client(strict.target, model="slow", retries=0) as client:
                with pytest.raises(grpc.RpcError) as err:
                    client.explain_many(images, per_call=17, calls=2)
                left = settle(strict)
        else:

            async def many():
                async with AsyncClient(strict.target, model="slow", retries=0) as client:
                    with pytest.raises(grpc.RpcError) as err:
                        await client.explain_many(images, per_call=17, calls=2)
                    return err, await asyncio.to_thread(settle, strict)

            err, left = asyncio.run(many())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert left == 0
    counts = since(strict, before)
    # Cancelled while its requests ran, or before the server read the call at all (then
    # nothing counts it: one full run saw all zeros); a client that did not cancel runs 16.
    assert counts["executed"] < 16 and (counts["cancelled"] >= 1 or counts["executed"] == 0), counts


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
    # A sibling left behind would be decoded before a later call's image (the decode pool takes
    # its work in order; on another of its threads, one may still be decoding) and queued before
    # it: by the time that call is answered and the queue is empty, it would have run.
    later = triton.InferInput("image_bytes", [1], "BYTES")
    later.set_data_from_numpy(blobs[1:2])
    triton.InferenceServerClient(strict.target).infer("slow", [later])
    assert settle(strict) == 0
    executed = strict.metric("camserve_executed_requests_total", model="slow") - executed_before - 1
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
    served = {}  # caller thread -> whether a call of its has succeeded

    def record(started: float, outcome):
        outcomes.append((started, outcome))
        if outcome in (grpc.StatusCode.OK, 200):
            served[threading.current_thread().name] = True

    def caller():
        with Client(strict.target, model="slow", retries=0) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.explain(IMAGE, timeout=30)
                    record(started, grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    record(started, err.code())

    rest = json.dumps({"signature_name": "explain", "instances": [{"b64": base64.b64encode(png).decode()}]})

    def http_caller(path="/camserve/models/slow/explain?heatmap=uint8", body=png):
        while not stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", strict.http_port, timeout=30)
            try:
                connection.request("POST", path, body=body)
                record(started, connection.getresponse().status)
            except ConnectionError:
                record(started, "no listener")
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
                    record(started, grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    record(started, err.code())

    tfserving_rest_caller = functools.partial(http_caller, "/v1/models/slow:predict", rest)
    threads = [threading.Thread(target=target) for target in [caller] * 3 + [tfserving_caller] * 2 + [http_caller] * 2 + [tfserving_rest_caller]]
    for t in threads:
        t.start()
    try:
        # Every caller under way (each answered once), rather than a second of load.
        assert eventually(lambda: len(served) == len(threads), 120), f"{len(served)} of {len(threads)} callers were answered"
        signalled.append(time.monotonic())  # the calls started before it are accepted
        strict.process.send_signal(15)
        # NOT_SERVING from when the signal is handled, through the 1.5 s shutdown delay:
        assert eventually(lambda: strict.health() == "NOT_SERVING", 10)
        probe = http.client.HTTPConnection("127.0.0.1", strict.http_port, timeout=5)
        probe.request("GET", "/v2/health/ready")
        assert probe.getresponse().status == 503  # readiness over HTTP too, while calls are still answered
        probe.close()
        code = strict.process.wait(60)
    finally:
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

    flags = ("--shutdown-delay", "0", "--max-concurrent-rpcs", "1", "--http-body-timeout", "5", "--max-batch-size", "1")
    server = ServerProcess(slow_repo, tmp_path / "drain.log", *flags)
    png = cv2.imencode(".png", IMAGE)[1].tobytes()
    try:
        server.wait_for("SERVING")
        upload = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        head = f"POST /camserve/models/slow/explain?heatmap=uint8 HTTP/1.1\r\nHost: camserve\r\nContent-Length: {len(png)}\r\n\r\n"
        upload.sendall(head.encode())
        # The upload holds the one place once its headers are read: other calls get 429.
        assert eventually(lambda: _http_status(server.http_port, "/v2/models/slow") == 429, 60, every=0)
        server.process.send_signal(15)
        # From the drain on, other calls are refused 503 while the listener stays open for the
        # upload. A drain that does not wait for the upload (the bug) closes the listener a few
        # turns of the event loop after the refusals begin: 20 refusals, each answered in a turn of
        # its own at least, give it those turns whatever the machine's speed (a second did, here).
        statuses = []  # 429 until the signal is handled

        def refused_enough() -> bool:
            statuses.append(_http_status(server.http_port, "/v2/models/slow"))
            return statuses[-1] == "no listener" or statuses.count(503) >= 20

        assert eventually(refused_enough, 60, every=0)
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


class IdleCalls:
    """`count` ExplainStreams opened and left idle, without a request: each one admitted
    holds a place under --max-concurrent-rpcs until close(); refused() says how many were
    not admitted (RESOURCE_EXHAUSTED at once)."""

    def __init__(self, target: str, count: int):
        from camserve.v1 import camserve_pb2_grpc as pb_grpc

        self.release, self.channel = threading.Event(), grpc.insecure_channel(target)

        def nothing():
            self.release.wait(120)
            yield from ()

        stub = pb_grpc.CamServeStub(self.channel)
        self.streams = [stub.ExplainStream(nothing(), timeout=180) for _ in range(count)]

    def refused(self) -> int:
        ended = [stream.code() for stream in self.streams if stream.done()]
        assert set(ended) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, ended
        return len(ended)

    def close(self):
        self.release.set()
        for stream in self.streams:
            stream.cancel()
        self.channel.close()


def admitted(target: str) -> bool:
    """Whether a call finds a place under --max-concurrent-rpcs (and is answered)."""
    with Client(target, model="slow", retries=0, health_check=False) as client:
        try:
            client.explain(IMAGE, timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-concurrent-rpcs" in err.details():
                return False
            raise
    return True


def test_a_burst_of_large_images_is_shed_before_work_within_the_memory_bound(slow_repo, tmp_path):
    """160 calls (20x the queue) of 3 MB images at once, twice: while idle calls hold
    every place under --max-concurrent-rpcs, all are refused RESOURCE_EXHAUSTED before
    their messages are read; with the places free, the admitted ones run and the rest get
    RESOURCE_EXHAUSTED before decoding (how many depends on how fast one client delivers
    480 MB: none to over 100). The server's memory grows by less than
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
        idle = IdleCalls(server.target, 17)
        try:  # once one is refused, the other 16 hold every place
            assert eventually(lambda: idle.refused() == 1, 30), f"{idle.refused()} of 17 idle calls refused"
            with collector.frozen():  # the burst's pace is the client's: no collector stall in it
                shed = asyncio.run(burst())
        finally:
            idle.close()
        assert eventually(lambda: admitted(server.target), 30), "the idle calls' places are free again"
        with collector.frozen():
            outcomes = asyncio.run(burst())
        peak = rss_kb(pid, "VmHWM")
    finally:
        server.terminate()
    assert set(shed) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, set(shed)
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(outcomes)
    served, refused = outcomes.count(grpc.StatusCode.OK), outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert served >= 8  # the first 8 to arrive find room in the queue, whatever the pace
    bound_mb = 16 * 4 * 4 + 2 * 1_100_000 * 16 / 2**20 + 64
    grown_mb = (peak - before) / 1024
    print(f"burst: {served} served, {refused} refused; RSS grew {grown_mb:.0f} MB (bound {bound_mb:.0f} MB)")
    assert grown_mb < bound_mb


def test_a_server_does_not_outlive_the_process_that_started_it(tmp_path):
    """A crashed pytest (one SIGSEGV'd in CI) left the servers it had started running, an
    hour on, holding their ports and memory. A parent that started one by ServerProcess
    is killed: its child goes too. The child here is a sleeping interpreter in the server's
    place: what stops it is ServerProcess's, not the server's, and a real one costs 10 s."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from camserve.server.ops.process import ServerProcess;"
        f"child = ServerProcess(Path('.'), Path({str(tmp_path / 'child.log')!r}), command=[sys.executable, '-c', 'import time; time.sleep(600)']);"
        "print(child.process.pid, flush=True); sys.stdin.read()"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def running() -> bool:  # a child killed but not yet reaped by init is a zombie
        try:
            return open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    gone = eventually(lambda: not running(), 10)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the child outlived its parent"
