"""Folders of photos against a server with a small queue (--max-enqueued 8):
streams are held to a window, so nothing is shed, and `camserve explain`
answers every image of a large nested folder."""

import csv
import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from camserve.client import Client
from camserve.server.ops.process import serving
from tests import models

SIZE = models.SIZE
IMAGE = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small_queue(server_repo, tmp_path_factory):
    """max_batch_size 32 (the default), at most 8 waiting: the stream window is 8."""
    with serving(server_repo, tmp_path_factory.mktemp("logs") / "small_queue.log", "--max-enqueued", "8") as process:
        yield process


def test_a_stream_pushed_all_at_once_is_not_shed(small_queue):
    """200 requests written as fast as gRPC takes them: the server reads no more
    than its window ahead, so none meets the full queue."""
    with Client(small_queue.target, model="tiny", retries=0) as client:
        requests = [client._request(IMAGE, request_id=str(i)) for i in range(200)]
        responses = list(client.stub.ExplainStream(iter(requests), timeout=120))
    errors = [(r.id, r.error.message) for r in responses if r.HasField("error")]
    assert errors == []
    assert sorted(int(r.id) for r in responses) == list(range(200))
    assert max(r.timing.batch_size for r in responses) <= 8


def test_a_kserve_stream_pushed_all_at_once_is_not_shed(small_queue):
    """ModelStreamInfer goes through the same window (Triton's protos: camserve's
    share their package and must not be loaded next to them)."""

    def request(i):
        message = service_pb2.ModelInferRequest(model_name="tiny", id=str(i))
        message.inputs.add(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, 3])
        message.raw_input_contents.append(IMAGE.tobytes())
        message.outputs.add(name="class_index")
        return message

    with grpc.insecure_channel(small_queue.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses = list(stub.ModelStreamInfer(iter([request(i) for i in range(200)]), timeout=120))
    assert [r.error_message for r in responses if r.error_message] == []
    assert sorted(int(r.infer_response.id) for r in responses) == list(range(200))


def _folder(root, count: int):
    """`count` tiny PNGs over nested folders (the same names in each), images with
    upper-case extensions, files that are not images, and one corrupt JPEG."""
    rng = np.random.default_rng(1)
    images = []
    for i in range(count):
        folder = root / f"set{i % 4}" / ("deeper" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i // 4:04d}{'.PNG' if i % 50 == 0 else '.png'}"
        cv2.imwrite(str(path), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 0])
        images.append(path)
    (root / "set0" / "notes.txt").write_text("not an image")
    (root / "set1" / "labels.json").write_text("{}")
    (root / "set2" / "deeper" / "img0000.png.bak").write_bytes(b"backup")
    corrupt = root / "set3" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    return images, corrupt


def test_explain_a_folder_of_2000_images_answers_every_one(small_queue, tmp_path):
    images, corrupt = _folder(tmp_path / "photos", 2000)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camserve", "explain", str(tmp_path / "photos"), "--target", small_queue.target]
    command += ["--model", "tiny", "--out", str(out), "--top-k", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert done.returncode == 1, "one image failed, so the run fails, but only at the end"
    assert f"{corrupt}: INVALID_ARGUMENT" in done.stderr
    assert "RESOURCE_EXHAUSTED" not in done.stderr + done.stdout
    assert "ETA" in done.stderr, "progress with a rate and an ETA"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["path"] for r in rows] == [str(p) for p in sorted([*images, corrupt])], "one row per image, in folder order"
    by_path = {r["path"]: r for r in rows}
    failed = by_path.pop(str(corrupt))
    assert failed["error"].startswith("INVALID_ARGUMENT") and failed["heatmap_file"] == ""
    for row in by_path.values():
        assert row["error"] == ""
        assert 0 <= int(row["class"]) < models.CLASSES and 0 < float(row["probability"]) <= 1
    # Overlays mirror the folder tree, so equal names in different folders do not collide.
    for path in images:
        overlay = out / path.relative_to(tmp_path / "photos").parent / f"{path.stem}_gradcam.png"
        assert by_path[str(path)]["heatmap_file"] == str(overlay)
    written = sorted(out.rglob("*.png"))
    assert len(written) == len(images)
    assert cv2.imread(str(written[0])).shape == (SIZE, SIZE, 3)
