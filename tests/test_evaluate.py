"""`camserve evaluate`: the faithfulness measures on their own, then the command
through a real server on the exported demo model and held-out shapes with their
boxes, where Grad-CAM must beat a random map and a centre-prior map."""

import json
import subprocess
import sys

import numpy as np
import pytest

from camserve.client import faithfulness
from camserve.boxes import Box
from camserve.demo import shapes

HELD_OUT_SEED = 777  # used by neither training nor the other tests


def test_deletion_and_insertion_take_pixels_in_the_maps_order():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (12, 20, 3), dtype=np.uint8)  # no black pixel to begin with
    heatmap = rng.random((12, 20)).astype(np.float32)
    steps = 4
    images = faithfulness.perturbed(image, heatmap, steps)
    assert len(images) == 2 * steps + 3
    deletion, insertion, masked = images[: steps + 1], images[steps + 1 : -1], images[-1]
    ranked = np.argsort(-heatmap.ravel())  # distinct values: no ties to break
    for k, deleted in enumerate(deletion):
        gone = np.flatnonzero((deleted == 0).all(axis=2).ravel())
        assert sorted(gone) == sorted(ranked[: round(k / steps * heatmap.size)])
    np.testing.assert_array_equal(insertion[0], faithfulness.blurred(image))
    np.testing.assert_array_equal(insertion[-1], image)
    half = ranked[: heatmap.size // 2]
    np.testing.assert_array_equal(insertion[2].reshape(-1, 3)[half], image.reshape(-1, 3)[half])
    np.testing.assert_array_equal(masked, np.round(image * heatmap[..., None]).astype(np.uint8))


def test_scores_follow_their_definitions():
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[2:5, 6:9] = 1.0
    p = np.linspace(1, 0, 5).tolist() + np.linspace(0, 1, 5).tolist() + [0.3]
    s = faithfulness.scores(heatmap, 0.6, p, Box(6, 2, 9, 5), steps=4)
    assert s.deletion_auc == pytest.approx(np.trapezoid(np.linspace(1, 0, 5), dx=0.25))
    assert s.insertion_auc == pytest.approx(0.5)
    assert s.drop == pytest.approx(0.5) and not s.increase
    assert s.hit and s.localised
    elsewhere = faithfulness.scores(heatmap, 0.2, p, Box(0, 0, 3, 3), steps=4)
    assert not elsewhere.hit and not elsewhere.localised and elsewhere.increase and elsewhere.drop == 0


@pytest.fixture(scope="module")
def demo_server(demo_repo, tmp_path_factory):
    from camserve.server.ops.process import serving

    with serving(demo_repo, tmp_path_factory.mktemp("logs") / "server.log") as process:
        yield process


def test_evaluate_on_the_demo_model_gradcam_beats_random_and_centre_maps(demo_server, tmp_path):
    images = tmp_path / "held_out"
    boxes = shapes.write_set(images, 48, HELD_OUT_SEED)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "evaluation"
    command = [sys.executable, "-m", "camserve", "evaluate", str(images), "--target", demo_server.target]
    command += ["--boxes", str(boxes), "--methods", "gradcam", "--steps", "8", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "evaluation.json").read_text())
    assert result["images"] == 48 and result["boxes"] == 48
    gradcam, random, centre = (result["methods"][m] for m in ("gradcam", "random", "centre"))
    assert gradcam["pointing_game_pct"] >= random["pointing_game_pct"] + 30, result
    assert gradcam["pointing_game_pct"] >= centre["pointing_game_pct"] + 30, result
    assert gradcam["deletion_auc"] < random["deletion_auc"], result
    assert "| gradcam |" in done.stdout and "evaluate: 8/48 images" in done.stderr, "a table, and progress"
    for picture in ("curves.png", "grid.png"):
        assert (out / picture).stat().st_size > 1000


def test_evaluate_refuses_what_it_cannot_do(demo_server, tmp_path):
    shapes.write_set(tmp_path / "few", 2, HELD_OUT_SEED)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("file,left\nx,1\n")

    def evaluate(folder, *extra):
        command = [sys.executable, "-m", "camserve", "evaluate", str(tmp_path / folder), "--target", demo_server.target]
        return subprocess.run([*command, "--out", str(tmp_path / "out"), *extra], capture_output=True, text=True, timeout=120)

    unknown = evaluate("few", "--methods", "lime")
    assert unknown.returncode == 2 and "does not offer lime" in unknown.stderr
    nothing = evaluate("empty")
    assert nothing.returncode == 2 and "no images" in nothing.stderr
    bad = evaluate("few", "--boxes", str(tmp_path / "bad.csv"))
    assert bad.returncode == 2 and "cannot read boxes" in bad.stderr
    no_layer = evaluate("few", "--layers", "nope")
    assert no_layer.returncode == 2 and "does not offer nope" in no_layer.stderr


def test_evaluate_compares_methods_at_named_layers(demo_server, tmp_path):
    shapes.write_set(tmp_path / "few", 2, HELD_OUT_SEED)
    command = [sys.executable, "-m", "camserve", "evaluate", str(tmp_path / "few"), "--target", demo_server.target]
    command += ["--methods", "gradcam", "layercam", "--layers", "last_conv", "--steps", "2", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out" / "evaluation.json").read_text())["methods"]
    assert list(rows) == ["gradcam@last_conv", "layercam@last_conv", "random", "centre"]
