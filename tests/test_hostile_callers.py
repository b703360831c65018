"""What a hostile or careless caller can send must not starve probes, stall the
event loop or be answered with the wrong status: a real server with small
limits, called over the wire."""

import asyncio
import queue
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.client import AsyncClient, Client
from camserve.client.messages import request_message, request_options
from camserve.v1 import camserve_pb2 as pb
from tests import models, reference
from tests.waiting import eventually, settle

CALL_LIMIT = 3
MAX_ENQUEUED = 4


@pytest.fixture(scope="module")
def guarded(server_repo, tmp_path_factory):
    """The tiny test model (32x32, 5 classes) with room for 3 calls, 4 queued
    requests and 1 MB messages."""
    from camserve.server.ops.process import serving

    args = ("--max-concurrent-rpcs", str(CALL_LIMIT), "--max-enqueued", str(MAX_ENQUEUED), "--max-batch-size", "4")
    with serving(server_repo, tmp_path_factory.mktemp("logs") / "guarded.log", *args, "--max-message-mb", "1") as process:
        yield process


def inflating_png(side: int = 6000) -> bytes:
    """A bilevel PNG of a few KB that decodes to side x side pixels (36 MP of RGB at 6000)."""
    ok, data = cv2.imencode(".png", np.zeros((side, side), np.uint8), [cv2.IMWRITE_PNG_BILEVEL, 1])
    assert ok and len(data) < 16 * 1024
    return data.tobytes()


def broken_inflating_png() -> bytes:
    """inflating_png() with the CRC of its last IDAT chunk broken: libpng inflates every row
    before it checks that CRC, so this decodes as long as the good one and is then refused
    INVALID_ARGUMENT ("could not be decoded"); it never reaches the model."""
    data = bytearray(inflating_png())
    at, last_crc = 8, None  # after the signature: chunks of length, type, data, CRC
    while at < len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), bytes(data[at + 4 : at + 8])
        if kind == b"IDAT":
            last_crc = at + 8 + length
        at += 12 + length
    data[last_crc] ^= 0xFF
    return bytes(data)


def check(target: str, service: str, timeout: float = 5.0) -> str:
    """A health Check on a new connection: the status, or the error's code."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.RpcError as err:
            return err.code().name


def in_flight(server) -> float:
    """Calls in flight, as the event loop says: scraped at /metrics on the HTTP port (a probe
    of its own, outside the call limit), which the loop answers (--metrics-port's endpoint
    is a thread's)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{server.http}/metrics", timeout=10).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "camserve_in_flight_requests")
    return family.samples[0].value


def answered_while_decoding(server, send, probes, attempts: int = 10):
    """What probes() answered while the event loop was free and an image still decoding,
    or None when no try of `attempts` saw that. A try sends broken_inflating_png() by send()
    on a thread (the server's only call in flight) and meanwhile scrapes in_flight(), calls
    probes() and scrapes again. Such a call is in flight while its image decodes (or waits
    for a decode thread) and no longer: it never reaches the model. Decoded on the event
    loop, it would be in flight for one turn of the loop with nothing awaited in it, and no
    scrape could see it, the loop answering the scrapes; two that see it saw it in flight
    from before the probes were answered until after. An ordering, not a latency: a slower
    machine only decodes for longer (a try misses when the decode ends before the second
    scrape)."""
    bomb = broken_inflating_png()
    for _ in range(attempts):
        refusals = []
        sender = threading.Thread(target=lambda: refusals.append(send(bomb)))
        sender.start()
        try:
            while sender.is_alive():
                if in_flight(server) == 1:
                    answers = probes()
                    if in_flight(server) == 1:
                        return answers
                    break
        finally:
            sender.join()
            assert refusals and "could not be decoded" in refusals[0], refusals
    return None


def refusal_of(client):
    """send() for answered_while_decoding: the message a call of `client`'s is refused with."""

    def send(image: bytes) -> str:
        try:
            client.explain(image, timeout=60)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
        return "answered"

    return send


class HeldStreams:
    """`count` ExplainStreams, each answered once and then held open."""

    def __init__(self, target: str, count: int):
        self.client = Client(target, model="tiny", retries=0)
        self.release = threading.Event()
        self.streams, self.first = [], []
        request = self.client._request(reference.smooth_images(1, models.SIZE, seed=5)[0], request_id="held")

        def one_then_hold():
            yield request
            self.release.wait(60)

        for _ in range(count):
            stream = self.client.stub.ExplainStream(one_then_hold(), timeout=60)
            self.streams.append(stream)
            self.first.append(next(stream))

    def close(self):
        self.release.set()
        for stream in self.streams:
            stream.cancel()
        self.client.close()


def test_probes_answer_while_streams_fill_the_call_limit(guarded):
    """Streams as long as a folder run fill --max-concurrent-rpcs: the next call is
    refused with RESOURCE_EXHAUSTED naming the flag, but health (readiness and
    liveness, Check and Watch) and KServe's probes answer, and calls go through
    again once the streams close (grpc's own limit refused the probes too)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    held = HeldStreams(guarded.target, CALL_LIMIT)
    try:
        assert all(first.error.code == 0 for first in held.first)
        image = reference.smooth_images(1, models.SIZE, seed=6)[0]
        with Client(guarded.target, model="tiny", retries=0) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.explain(image)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-concurrent-rpcs" in refused.value.details()
        for service in ("", "camserve.liveness"):
            assert check(guarded.target, service) == "SERVING"
        with grpc.insecure_channel(guarded.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert kserve.ServerLive(service_pb2.ServerLiveRequest(), timeout=5).live
            assert kserve.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready
            assert kserve.ModelReady(service_pb2.ModelReadyRequest(name="tiny"), timeout=5).ready
            watch.cancel()
    finally:
        held.close()
    deadline = time.monotonic() + 10  # the server sees the streams end shortly after the cancels
    with Client(guarded.target, model="tiny", retries=0) as client:
        while True:
            try:
                assert client.explain(image).class_index >= 0
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline


def test_inflating_pngs_are_decoded_off_the_event_loop(guarded):
    """4 KB PNGs that each decode to 36 megapixels (inline decoding was decided by
    compressed size, and they ran on the event loop: eight took health from 9 ms to
    0.5-0.8 s). Nine, three at a time, are all explained; and health (readiness and
    liveness) answers while one decodes: answered_while_decoding's ordering, rather than
    a probe's latency."""
    bomb = request_message(inflating_png(), request_options(model="tiny"))

    async def flood():
        async with AsyncClient(guarded.target, model="tiny", retries=0) as client:
            calls = [client.stub.Explain(bomb, timeout=60) for _ in range(CALL_LIMIT)]
            return await asyncio.gather(*calls)

    answers = [answer for _ in range(3) for answer in asyncio.run(flood())]
    assert all(a.image_width == 6000 and a.explained.index >= 0 for a in answers)

    with Client(guarded.target, model="tiny", retries=0) as client, grpc.insecure_channel(guarded.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def probes():
            return [health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status for service in ("", "camserve.liveness")]

        probes()  # connected
        answered = answered_while_decoding(guarded, refusal_of(client), probes)
    assert answered == [health_pb2.HealthCheckResponse.SERVING] * 2, "no health check was answered while an image decoded"


def test_a_call_cut_at_its_deadline_while_its_image_decodes_is_counted_as_expired(guarded):
    """A 36-megapixel PNG takes 0.2-0.7 s to decode here (longer on a slower machine). Under
    a 0.1 s gRPC deadline gRPC cuts the call while the handler waits on the decode pool (in
    the queue the server's own deadline would answer first): the handler is cancelled, and
    the call is counted DEADLINE_EXCEEDED, not CANCELLED, since its deadline has come. The
    call goes through Uncancelled, so that the server alone cuts it, at its own deadline: the
    caller's cancel would race it (a server that read the call late sees it come early).
    A call the server could not start before its deadline (nothing counted: gRPC never runs
    its handler) is sent again, at most twice."""
    from tests.uncancelled import Uncancelled

    bomb = request_message(inflating_png(), request_options(model="tiny"))

    def count(code: str) -> float:
        return guarded.metric("camserve_requests_total", model="tiny", code=code)

    with Uncancelled(guarded.target) as proxy, Client(proxy.target, model="tiny", retries=0, health_check=False) as client:
        for _ in range(3):
            before = count("DEADLINE_EXCEEDED"), count("CANCELLED")
            with pytest.raises(grpc.RpcError) as err:
                client.stub.Explain(bomb, timeout=0.1)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert settle(guarded) == 0
            expired, cancelled = count("DEADLINE_EXCEEDED") - before[0], count("CANCELLED") - before[1]
            if expired + cancelled:
                break
    assert (expired, cancelled) == (1, 0), "the call cut at its deadline is counted as expired"


def test_top_k_maps_beyond_what_can_be_admitted_is_invalid(guarded):
    """5 maps need 5 places in a queue of 4: never admissible, so INVALID_ARGUMENT
    (RESOURCE_EXHAUSTED says "retry later", and a retrying client retried forever)."""
    image = reference.smooth_images(1, models.SIZE, seed=7)[0]
    with Client(guarded.target, model="tiny", retries=0) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.explain(image, top_k_maps=MAX_ENQUEUED + 1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_enqueued" in err.value.details()
        assert len(client.explain(image, top_k_maps=MAX_ENQUEUED).maps) == MAX_ENQUEUED


def test_a_call_without_its_request_message_is_invalid_and_leaves_the_call_limit(guarded):
    """Explain is registered as a client stream (admitted before its message is read), so a
    caller can close it without sending one. Each such call is INVALID_ARGUMENT and counted
    out again: more of them than the call limit, then a real call, which must be admitted."""
    image = reference.smooth_images(1, models.SIZE, seed=7)[0]
    with grpc.insecure_channel(guarded.target) as channel:
        explain = pb.DESCRIPTOR.services_by_name["CamServe"].methods_by_name["Explain"]
        empty = channel.stream_unary(
            f"/{explain.containing_service.full_name}/{explain.name}",
            request_serializer=pb.ExplainRequest.SerializeToString,
            response_deserializer=pb.ExplainResponse.FromString,
        )
        for _ in range(CALL_LIMIT + 1):
            with pytest.raises(grpc.RpcError) as err:
                empty(iter(()), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no request message" in err.value.details()
    with Client(guarded.target, model="tiny", retries=0) as client:
        assert client.explain(image).heatmap.ndim == 2  # admitted and answered


def test_the_response_size_check_counts_every_map(guarded):
    """A 300x300 map at the image's size is 360 KB: one fits the 1 MB limit; with
    top_k_maps 3 the answer carries four and is refused before any work (it used to
    run and then fail to send)."""
    image = reference.smooth_images(1, 300, seed=8)[0]
    executed = guarded.metric("camserve_executed_requests_total", model="tiny")
    with Client(guarded.target, model="tiny", retries=0) as client:
        assert client.explain(image, original_size=True).heatmap.shape == (300, 300)
        with pytest.raises(grpc.RpcError) as err:
            client.explain(image, original_size=True, top_k_maps=3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4 heatmap(s)" in err.value.details()
        assert len(client.explain(image, original_size=True, top_k_maps=3, heatmap_type="uint8").maps) == 3
    assert guarded.metric("camserve_executed_requests_total", model="tiny") - executed == 1 + 3


def test_bad_requests_in_a_batch_leave_their_batch_mates_right(guarded):
    """One ExplainMany (the stream window's 4) of good images, undecodable bytes and an out-of-range class,
    admitted together: the good ones run together in one batch and get the answers
    they get alone; each bad one gets its own INVALID_ARGUMENT."""
    images = reference.smooth_images(3, models.SIZE, seed=9)
    options = request_options(model="tiny", return_scores=True)
    requests = [
        request_message(images[0], options, "0"),
        pb.ExplainRequest(id="1", model="tiny", image=pb.Image(encoded=b"\x89PNG\r\n\x1a\n broken")),
        request_message(images[1], options, "2"),
        request_message(images[2], request_options(model="tiny", class_index=models.CLASSES), "3"),
    ]
    with Client(guarded.target, model="tiny", retries=0) as client:
        alone = {i: client.explain(images[j], return_scores=True) for i, j in ((0, 0), (2, 1))}
        many = client.stub.ExplainMany(pb.ExplainManyRequest(requests=requests), timeout=30)
    answers = {r.id: r for r in many.responses}
    assert answers["1"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["3"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "out of range" in answers["3"].error.message
    assert max(answers[str(i)].timing.batch_size for i in alone) > 1, "the good requests shared a batch"
    for i, own in alone.items():
        answer = answers[str(i)]
        assert answer.error.code == 0
        np.testing.assert_allclose(answer.logits, own.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.frombuffer(answer.heatmap.data, "<f4").reshape(own.heatmap.shape), own.heatmap, atol=1e-5)


def test_explain_by_upload_renders_a_large_image_once_at_a_bounded_size(guarded):
    """A 12-megapixel photo: the overlay and the PNG map come at most 4 megapixels,
    aspect kept (they were rendered at full size, twice, after the call had been
    accounted), and the box is in the photo's own pixels."""
    import base64
    import json
    import urllib.request

    small = reference.smooth_images(1, models.SIZE, seed=10)[0]
    photo = cv2.imencode(".jpg", cv2.resize(small, (4000, 3000), interpolation=cv2.INTER_CUBIC))[1].tobytes()

    def upload(query: str) -> bytes:
        request = urllib.request.Request(f"{guarded.http}/camserve/models/tiny/explain?{query}", data=photo, method="POST")
        return urllib.request.urlopen(request, timeout=60).read()

    overlay = cv2.imdecode(np.frombuffer(upload("format=overlay&box=0.3"), np.uint8), cv2.IMREAD_COLOR)
    answer = json.loads(upload("box=0.3"))
    heatmap = cv2.imdecode(np.frombuffer(base64.b64decode(answer["heatmap"]["data"]), np.uint8), cv2.IMREAD_COLOR)
    for height, width in (overlay.shape[:2], heatmap.shape[:2], (answer["heatmap"]["height"], answer["heatmap"]["width"])):
        assert height * width <= 4_000_000 and abs(width / height - 4 / 3) < 0.01 and width > 2000
    assert answer["image"] == {"height": 3000, "width": 4000}
    box = answer["box"]
    assert 0 <= box["x0"] < box["x1"] <= 4000 and 0 <= box["y0"] < box["y1"] <= 3000


class SlowBodies:
    """HTTP infer calls that send their headers and a few bytes of a body they
    never finish: each holds a place under the HTTP call limit until the body
    timeout (30 s by default) frees it."""

    def __init__(self, port: int, count: int):
        import socket

        self.sockets = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: camserve\r\nContent-Length: 100000\r\n\r\n{\"inp")
            self.sockets.append(s)

    def close(self):
        for s in self.sockets:
            s.close()


def http_status(base: str, path: str, body: bytes | None = None) -> int:
    """The status of one call on a new connection, as a probe makes it."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(urllib.request.Request(base + path, data=body), timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code


def test_probes_answer_promptly_under_hostile_load(guarded):
    """Long streams fill the gRPC call limit, slow bodies hold the HTTP one, and 4 KB PNGs
    that inflate to 36 megapixels arrive beside good images: every probe (readiness and
    liveness, gRPC and HTTP) answers SERVING / 200, never RESOURCE_EXHAUSTED or 429, and
    all four are answered while such a PNG decodes with both limits full: an ordering
    (answered_while_decoding), where a bound of 250 ms on each probe's latency was. The
    good images are explained."""
    good = reference.smooth_images(4, models.SIZE, seed=11)
    png = cv2.imencode(".png", good[0])[1].tobytes()
    probes, done = [], threading.Event()

    def probe_each():
        grpc_probes = [check(guarded.target, service) for service in ("", "camserve.liveness")]
        return grpc_probes + [http_status(guarded.http, path) for path in ("/v2/health/live", "/v2/health/ready")]

    def probe():
        while True:  # a round at least
            probes.extend(probe_each())
            if done.is_set():
                return

    held = HeldStreams(guarded.target, CALL_LIMIT - 1)
    slow = SlowBodies(guarded.http_port, CALL_LIMIT)  # every HTTP place...
    prober = threading.Thread(target=probe)
    try:
        assert http_status(guarded.http, "/camserve/models/tiny/explain?heatmap=none", png) == 429
        prober.start()
        with Client(guarded.target, model="tiny", retries=0) as client:  # the last gRPC place
            while_decoding = answered_while_decoding(guarded, refusal_of(client), probe_each)
        slow.sockets.pop().close()  # ...but one, for the good uploads below
        with Client(guarded.target, model="tiny", retries=0) as client:  # the last gRPC place
            bomb = inflating_png()
            mixed = [bomb if i % 2 else good[i // 2 % len(good)] for i in range(8)]
            stream = client.explain_stream(mixed, timeout=60)
            answers = [next(stream)]
            with Client(guarded.target, model="tiny", retries=0) as other, pytest.raises(grpc.RpcError) as refused:
                other.explain(good[0])  # while the stream is open, the limit is full
            answers += list(stream)
        uploads = []

        def uploaded() -> bool:  # the closed slow body's place frees once the server notices
            if http_status(guarded.http, "/camserve/models/tiny/explain?heatmap=none", png) == 200:
                uploads.append(200)
            return len(uploads) == 3

        assert eventually(uploaded, 30)
    finally:
        done.set()
        if prober.is_alive():
            prober.join()
        slow.close()
        held.close()
    assert while_decoding == ["SERVING", "SERVING", 200, 200], "no probe was answered while an image decoded"
    assert all(a.error is None and a.class_index >= 0 for a in answers), [a.error for a in answers]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(probes) >= 4 and set(probes) <= {"SERVING", 200}, probes
