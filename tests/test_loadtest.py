"""camserve loadtest against the real server: short, small runs."""

import csv
import functools
import json
import subprocess
import sys

import numpy as np

from camserve.client.loadtest import native_sender, run_levels
from tests import models


def test_library_closed_and_open_loop_account_for_every_request(server):
    images = list(np.random.default_rng(0).integers(0, 256, (4, models.SIZE, models.SIZE, 3), dtype=np.uint8))
    sender = functools.partial(native_sender, server.target, model="tiny")
    reports = run_levels(sender, images, closed=[1, 4], rates=[40], duration=1.0, warmup=0.3, stream=None)
    assert [(r.mode, r.level) for r in reports] == [("closed", 1), ("closed", 4), ("open", 40)]
    for r in reports:
        assert r.sent > 0 and r.succeeded + sum(r.errors.values()) == r.sent
        assert r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"] <= r.latency_ms["max"]
        assert r.mean_batch_size >= 1
    assert 20 <= reports[2].sent <= 70, "about 40 Poisson arrivals in one second"


def test_cli_over_kserve_with_a_folder_of_images_writes_json_csv_and_plot(server, tmp_path):
    """In a child process: KServe stubs and tritonclient's share a proto package.
    Images from a folder travel encoded, as KServe `image_bytes`."""
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(np.random.default_rng(1).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)):
        cv2.imwrite(str(folder / f"{i}.png"), image)
    out = tmp_path / "lt"
    command = [sys.executable, "-m", "camserve", "loadtest", "--target", server.target, "--api", "kserve", "--model", "tiny"]
    command += ["--images", str(folder)]
    command += ["--concurrency", "2", "--rate", "30", "--duration", "1", "--warmup", "0.3", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["api"] == "kserve" and report["images"] == str(folder)
    assert [lvl["mode"] for lvl in report["levels"]] == ["closed", "open"]
    for level in report["levels"]:
        assert level["succeeded"] + sum(level["errors"].values()) == level["sent"] > 0
        assert level["mean_batch_size"] >= 1  # from the model statistics
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 2 and float(rows[0]["throughput"]) > 0
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_several_images_per_call_count_images_not_calls(server):
    images = list(np.random.default_rng(2).integers(0, 256, (2, models.SIZE, models.SIZE, 3), dtype=np.uint8))
    sender = functools.partial(native_sender, server.target, model="tiny", images_per_call=4)
    (report,) = run_levels(sender, images, closed=[2], duration=1.0, warmup=0.3, stream=None)
    assert report.images_per_call == 4 and report.succeeded == report.sent > 0 and not report.errors
    calls_per_s = report.succeeded / report.duration_s
    assert abs(report.throughput - 4 * calls_per_s) < 1e-6 * report.throughput
    assert report.mean_batch_size > 1, "a call's images share batches"
