"""Predict-only requests (no heatmap asked for) run the exported `predict`
signature: their probabilities are the original Keras model's, for every head,
and a batch never mixes them with requests that want a map."""

import asyncio
from collections import Counter

import numpy as np
import pytest

from camserve.client import AsyncClient, Client
from tests import models, reference


@pytest.fixture(scope="module")
def predict_server(exports, tmp_path_factory):
    import shutil

    from camserve.server.ops.process import serving

    repo = tmp_path_factory.mktemp("predict") / "repo"
    for kind in ("functional", "binary", "sigmoid"):
        shutil.copytree(exports.get(kind)[0], repo / kind / "1")
    # The warm-up compiles every batch size of each model's ladder, for both signatures. Only
    # `functional` is sent batches (up to 8 requests; the ladder 1, 8 pads any smaller batch,
    # as 2 and 4 did); the heads are asked one image at a time, and their 3-image KServe
    # block runs one row a batch.
    for kind in ("binary", "sigmoid"):
        (repo / kind / "config.json").write_text('{"max_batch_size": 1}')
    flags = ("--max-batch-size", "8", "--allowed-batch-sizes", "1", "8", "--shutdown-delay", "0")
    with serving(repo, tmp_path_factory.mktemp("logs") / "server.log", *flags) as process:
        yield process


@pytest.mark.parametrize("kind", ["functional", "binary", "sigmoid"])
def test_predict_only_answers_are_the_keras_models_own(exports, predict_server, kind):
    _, _, model32, _ = exports.get(kind)
    images = reference.smooth_images(3, models.SIZE, seed=90)
    own = model32.model(images / 255.0).numpy()
    if kind == "binary":
        own = np.concatenate([1 - own, own], axis=1)
    with Client(predict_server.target, model=kind) as client:
        for image, want in zip(images, own):
            result = client.predict(image, return_scores=True, top_k=2)
            np.testing.assert_allclose(result.probabilities, want, rtol=1e-4, atol=1e-6)
            assert result.heatmap is None and result.method == ""
            with pytest.raises(ValueError, match="no heatmap"):
                result.box()
            assert result.class_index == int(np.argmax(want)) and result.top_k[0].index == int(np.argmax(want))
            assert result.probability == pytest.approx(float(want.max()), rel=1e-4)
            explained = client.explain(image, return_scores=True)
            np.testing.assert_allclose(result.logits, explained.logits, rtol=1e-5, atol=1e-6)
            chosen = client.predict(image, class_index=1)
            assert chosen.class_index == 1 and chosen.probability == pytest.approx(float(want[1]), rel=1e-4)


def test_a_predict_only_image_in_a_stream_and_a_bad_class_are_handled(predict_server):
    images = reference.smooth_images(2, models.SIZE, seed=91)
    with Client(predict_server.target, model="functional") as client:
        results = list(client.explain_stream(list(images), heatmap_type="none"))
        assert all(r.heatmap is None and r.error is None for r in results)
        with pytest.raises(Exception) as err:
            client.predict(images[0], class_index=models.CLASSES)
        assert "INVALID_ARGUMENT" in str(err.value.code())


def test_batches_never_mix_predict_only_and_explain_requests(predict_server):
    """Each result reports the size of the batch it ran in: in batches of one kind,
    the results of a kind with batch size b come in whole groups of b."""
    images = reference.smooth_images(16, models.SIZE, seed=92)

    async def burst(client):
        calls = [client.predict(image) if i % 2 else client.explain(image) for i, image in enumerate(images)]
        return await asyncio.gather(*calls)

    async def rounds():
        async with AsyncClient(predict_server.target, model="functional") as client:
            return [await burst(client) for _ in range(5)]

    batched = 0
    for results in asyncio.run(rounds()):
        for predicted in (False, True):
            sizes = Counter(r.batch_size for r in results if (r.heatmap is None) == predicted)
            assert all(count % size == 0 for size, count in sizes.items()), (predicted, sizes)
            batched += sum(count for size, count in sizes.items() if size > 1)
    assert batched, "requests were batched at all"


@pytest.mark.parametrize("kind", ["functional", "sigmoid"])
def test_predict_only_honours_class_ranks(predict_server, kind):
    """class_index -r is the r-th highest class on the predict path too, natively and
    over KServe when no map output is asked for (it used to answer the top-1)."""
    import tritonclient.grpc as triton

    images = reference.smooth_images(3, models.SIZE, seed=93)
    with Client(predict_server.target, model=kind) as client:
        for image in images:
            scores = client.explain(image, return_scores=True).logits
            ranked = np.argsort(-scores, kind="stable")
            for rank in (2, 3, models.CLASSES):
                assert client.predict(image, class_index=-rank).class_index == ranked[rank - 1], rank
    inputs = [triton.InferInput("images", list(images.shape), "UINT8"), triton.InferInput("class_index", [len(images)], "INT32")]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(np.full(len(images), -2, np.int32))
    outputs = [triton.InferRequestedOutput(name) for name in ("logits", "class_index")]
    answer = triton.InferenceServerClient(predict_server.target).infer(kind, inputs, outputs=outputs)
    runner_up = np.argsort(-answer.as_numpy("logits"), axis=1, kind="stable")[:, 1]
    np.testing.assert_array_equal(answer.as_numpy("class_index"), runner_up)
