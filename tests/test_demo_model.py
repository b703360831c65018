"""The bundled demo model, exported as users get it, on freshly generated
held-out data: accuracy, and the Grad-CAM pointing game (the map's maximum,
mapped onto the image, falls inside the object's box)."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from camserve.demo import shapes

HELD_OUT_SEED = 12345  # used by neither training nor its reports
COUNT = 600


@pytest.fixture(scope="module")
def demo_export(demo_repo):
    path = demo_repo / "shapes" / "1"
    return path, tf.saved_model.load(str(path)).signatures["serving_default"]


@pytest.fixture(scope="module")
def held_out(demo_export):
    images, labels, boxes = shapes.generate(COUNT, HELD_OUT_SEED)
    explain = demo_export[1]
    outputs = [
        {k: v.numpy() for k, v in explain(images=chunk, class_index=np.full(len(chunk), -1, np.int32), method=np.zeros(len(chunk), np.int32)).items()}
        for chunk in np.array_split(images, 6)
    ]
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return images, labels, boxes, merged


def test_metadata_names_the_classes(demo_export):
    from camserve.export.repository import read_metadata

    meta = read_metadata(demo_export[0])
    assert meta["classes"] == list(shapes.CLASSES) and meta["preprocess"] == "scale"
    assert meta["input_size"] == [64, 64]


def test_accuracy_on_fresh_held_out_data(held_out):
    _, labels, _, out = held_out
    accuracy = float(np.mean(out["class_index"] == labels))
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


def test_pointing_game(held_out):
    images, _, boxes, out = held_out
    hits = 0
    for heatmap, (x0, y0, x1, y1) in zip(out["heatmap"], boxes):
        full = cv2.resize(heatmap, (images.shape[2], images.shape[1]), interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(np.argmax(full), full.shape)
        hits += x0 <= x < x1 and y0 <= y < y1
    rate = hits / len(images)
    assert rate >= 0.90, f"pointing game {rate:.3f}"
