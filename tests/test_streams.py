"""Flow control on ExplainStream: the server's window per stream, per-image
timeouts, and the client's own window of outstanding images, read lazily."""

import asyncio

import cv2
import grpc
import numpy as np
import pytest

from camserve.client import AsyncClient, Client
from camserve.server.ops.process import serving
from tests import models

SIZE = models.SIZE
WINDOW = 4


@pytest.fixture(scope="module")
def windowed(server_repo, tmp_path_factory):
    """Batches of up to 8, but one stream may have only 4 requests in flight."""
    args = ("--max-batch-size", "8", "--stream-window", str(WINDOW))
    with serving(server_repo, tmp_path_factory.mktemp("logs") / "windowed.log", *args) as process:
        yield process


def noise(count: int, size=(SIZE, SIZE), seed=0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8))


def test_the_server_starts_no_more_than_its_window_of_one_stream(windowed):
    """64 requests written at once: batches could hold 8, but a batch can only be
    formed from what the stream's window let in."""
    with Client(windowed.target, model="tiny") as client:
        requests = [client._request(image, request_id=str(i)) for i, image in enumerate(noise(64))]
        responses = list(client.stub.ExplainStream(iter(requests), timeout=60))
    assert sorted(int(r.id) for r in responses) == list(range(64))
    assert not any(r.HasField("error") for r in responses)
    assert max(r.timing.batch_size for r in responses) <= WINDOW


def test_per_image_timeouts_answer_on_the_stream_and_it_goes_on(windowed):
    """Large images with a 1 ms timeout cannot be decoded in time: each is dropped
    unrun and answered DEADLINE_EXCEEDED, while images without one succeed."""
    large = cv2.imencode(".png", noise(1, (1200, 1200), seed=1)[0])[1].tobytes()
    executed_before = windowed.metric("camserve_executed_requests_total", model="tiny")
    with Client(windowed.target, model="tiny") as client:
        requests = [
            client._request(noise(1, seed=i)[0], request_id=str(i)) if i % 2 else client._request(large, request_id=str(i), timeout=0.001)
            for i in range(12)
        ]
        assert requests[0].timeout_ms == 1 and requests[1].timeout_ms == 0
        responses = {int(r.id): r for r in client.stub.ExplainStream(iter(requests), timeout=60)}
        assert sorted(responses) == list(range(12))
        for i, response in responses.items():
            if i % 2:
                assert not response.HasField("error") and response.explained.index >= 0
            else:
                assert response.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] and "deadline" in response.error.message
        executed = windowed.metric("camserve_executed_requests_total", model="tiny") - executed_before
        assert executed == 6, "the late images were dropped before they ran"

        # The client's `timeout` is per image too.
        results = list(client.explain_stream([large, large], timeout=0.001))
        assert sorted(r.index for r in results) == [0, 1]
        assert all(r.error[0] == "DEADLINE_EXCEEDED" for r in results)
        assert [r.error for r in client.explain_stream([large])] == [None], "the default is generous"


def _write_images(folder, count: int) -> list:
    folder.mkdir()
    paths = []
    for i, image in enumerate(noise(count, seed=2)):
        paths.append(folder / f"{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def test_client_keeps_a_window_reads_lazily_and_reports_unreadable_paths(windowed, tmp_path):
    paths = _write_images(tmp_path / "images", 40)
    paths[5] = tmp_path / "missing.png"
    paths[9] = tmp_path  # a folder
    (tmp_path / "notes.txt").write_text("not an image")
    paths[13] = tmp_path / "notes.txt"
    read = []

    def images():
        for path in paths:
            read.append(path)
            yield path

    results = []
    with Client(windowed.target, model="tiny") as client:
        for result in client.explain_stream(images(), window=3):
            results.append(result)
            # At most `window` images sent and unanswered; the 2 that cannot be read take no slot.
            assert len(read) <= len(results) + 3 + 2
    assert sorted(r.index for r in results) == list(range(40))
    errors = {r.index: r.error for r in results if r.error}
    assert sorted(errors) == [5, 9, 13]
    assert errors[5][0] == "UNREADABLE" and "missing.png" in errors[5][1] and "No such file" in errors[5][1]
    assert errors[9][0] == "UNREADABLE" and "directory" in errors[9][1]
    assert errors[13][0] == "INVALID_ARGUMENT", "the server says what it cannot decode"
    assert max(r.batch_size for r in results if not r.error) <= 3


def test_async_client_keeps_a_window_and_reports_unreadable_paths(windowed, tmp_path):
    paths = _write_images(tmp_path / "images", 20)
    paths[3] = tmp_path / "missing.png"
    read = []

    def images():
        for path in paths:
            read.append(path)
            yield path

    async def main():
        results = []
        async with AsyncClient(windowed.target, model="tiny") as client:
            async for result in client.explain_stream(images(), window=2):
                results.append(result)
                assert len(read) <= len(results) + 2 + 1  # the window, and the one unreadable path
        return results

    results = asyncio.run(main())
    assert sorted(r.index for r in results) == list(range(20))
    assert [(r.index, r.error[0]) for r in results if r.error] == [(3, "UNREADABLE")]
