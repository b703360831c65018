"""Failures are visible and bounded: a model run that raises is logged with its
cause, counted, answered INTERNAL with an error id (never TensorFlow's text), and
fails only the request that caused it; a dead batcher fails health."""

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf

from camserve.client import Client
from camserve.server.ops.process import serving

SIZE = 8
POISON = 255  # a first pixel of this value makes the model raise


class Poisoned(tf.Module):
    """The exported signature's contract, failing at run time on poisoned images."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def explain(self, images, class_index, method):
        check = tf.debugging.assert_less(images[:, 0, 0, 0], tf.constant(POISON, tf.uint8), message="poisoned pixel")
        with tf.control_dependencies([check]):
            x = tf.reduce_mean(tf.cast(images, tf.float32), axis=(1, 2))
        logits = x[:, :2]
        n = tf.shape(images)[0]
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "class_index": tf.argmax(logits, axis=1, output_type=tf.int32),
            "heatmap": tf.zeros([n, 2, 2]),
            "heatmap_scale": tf.zeros([n]),
        }


@pytest.fixture(scope="module")
def poisoned_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("poison") / "repo"
    path = repo / "poison" / "1"
    module = Poisoned()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.explain})
    meta = {
        "name": "poison", "version": 1, "input_size": [SIZE, SIZE], "input_channels": 3, "preprocess": "none",
        "head": "softmax", "target_layer": "none", "feature_size": [2, 2], "num_classes": 2,
        "methods": ["gradcam"], "classes": None,
    }
    (path / "assets.extra").mkdir()
    (path / "assets.extra" / "camserve.json").write_text(json.dumps(meta))
    with serving(repo, tmp_path_factory.mktemp("logs") / "server.log", "--max-batch-size", "4", "--batch-timeout-ms", "200") as server:
        yield server


def image(poisoned: bool) -> np.ndarray:
    pixels = np.full((SIZE, SIZE, 3), 7, np.uint8)
    pixels[0, 0, 0] = POISON if poisoned else 0
    return pixels


def test_a_failing_request_fails_alone_and_visibly(poisoned_server):
    """Until the poisoned image shares a batch (the batch fails, then it alone):
    its batch-mates are answered, it gets INTERNAL with an error id."""
    server = poisoned_server
    failed_runs = []
    with Client(server.target, model="poison") as client:
        while len(failed_runs) < 8 and 2 not in failed_runs:
            before = server.metric("camserve_batch_failures_total", model="poison", reason="InvalidArgumentError")
            results = {r.index: r for r in client.explain_stream([image(False), image(True), image(False), image(False)])}
            failed_runs.append(server.metric("camserve_batch_failures_total", model="poison", reason="InvalidArgumentError") - before)
            assert [results[i].error is None for i in range(4)] == [True, False, True, True]
    assert 2 in failed_runs and set(failed_runs) <= {1, 2}, f"failed runs per attempt: {failed_runs}"
    code, message = results[1].error
    assert code == "INTERNAL" and "error id" in message and "poisoned" not in message
    error_id = re.search(r"error id (\w+)", message).group(1)
    log = server.log.read_text()
    assert re.search(rf"error id {error_id}: InvalidArgumentError: .*poisoned pixel", log), "the log carries the whole error"
    assert "failed: InvalidArgumentError" in log


def test_a_model_that_always_fails_does_not_multiply_work(poisoned_server):
    server = poisoned_server
    # (tritonclient, not our KServe stubs: one process cannot import both.)
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.target)
    # One KServe call of four encoded images: admitted together, so they form one
    # batch of four requests (each decoded on its own).
    before = server.metric("camserve_batch_failures_total", model="poison")
    encoded = triton.InferInput("image_bytes", [4], "BYTES")
    encoded.set_data_from_numpy(np.array([cv2.imencode(".png", cv2.cvtColor(image(True), cv2.COLOR_RGB2BGR))[1].tobytes()] * 4, dtype=object))
    with pytest.raises(Exception) as err:
        client.infer("poison", [encoded])
    assert "INTERNAL" in str(err.value) and "error id" in str(err.value)
    # The call ends at its first failed image; the batcher finishes the rest just after.
    deadline = time.monotonic() + 10
    while "fails alone too" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "fails alone too" in server.log.read_text()
    runs = server.metric("camserve_batch_failures_total", model="poison") - before
    assert runs == 3, f"{runs} failed runs for a batch of 4: the batch and two alone, then give up"
    # Four images already at the model's size are one block of one request: it fails
    # as a whole, so its rows are not tried one by one.
    before = server.metric("camserve_batch_failures_total", model="poison")
    raw = triton.InferInput("images", [4, SIZE, SIZE, 3], "UINT8")
    raw.set_data_from_numpy(np.stack([image(True)] * 4))
    with pytest.raises(Exception) as err:
        client.infer("poison", [raw])
    assert "INTERNAL" in str(err.value) and "error id" in str(err.value)
    assert server.metric("camserve_batch_failures_total", model="poison") - before == 1
    with Client(server.target, model="poison") as client:
        assert client.explain(image(False)).class_index in (0, 1), "the model still serves good requests"


def test_a_dead_batcher_is_reported_and_refuses_new_work():
    """The batcher's own loop dying (not a model error) is supervised."""
    from camserve.server.pipeline.batcher import Batcher, BatchingOptions, Item
    from camserve.server.pipeline.errors import RequestError
    from camserve.server.models.statistics import ModelStats
    from camserve.server.ops.observer import ModelObserver

    class Fatal(BaseException):
        pass

    def run_batch(images, class_index, method, contract):
        raise Fatal("the batcher loop cannot survive this")

    async def scenario():
        crashed = []
        batcher = Batcher(run_batch, BatchingOptions(max_batch_size=2), ThreadPoolExecutor(1), ModelObserver("m", ModelStats()), name="m")
        batcher.on_crash = crashed.append
        batcher.start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        for future in futures:
            batcher.submit(_block(Item, future))
        await asyncio.gather(*futures, return_exceptions=True)
        with pytest.raises(RequestError) as refused:
            batcher.submit(_block(Item, loop.create_future()))
        return crashed, [f.exception() for f in futures], refused.value

    crashed, errors, refused = asyncio.run(scenario())
    assert len(crashed) == 1 and isinstance(crashed[0], BaseException)
    assert all(isinstance(e, BaseException) for e in errors), "no caller is left waiting"
    assert refused.code == grpc.StatusCode.UNAVAILABLE and "batcher stopped" in refused.message


@pytest.mark.parametrize("in_flight", [1, 2])
def test_batches_in_flight_on_the_device(in_flight):
    """The GPU path (a second batch in flight) and the CPU path, on the CPU: never more
    batches run at once than allowed, and every request is answered with its own row. A
    batch waits until as many run as are allowed (or every row has started), so that the
    GPU path's two are certain to overlap; then it takes 50 ms more, in which a batcher
    that allowed more would start them."""

    from camserve.server.pipeline.batcher import Batcher, BatchingOptions, Item
    from camserve.server.models.statistics import ModelStats
    from camserve.server.ops.observer import ModelObserver

    running, most, started, changed = [0], [0], [0], threading.Condition()

    def run_batch(images, class_index, method, contract):
        with changed:
            running[0] += 1
            started[0] += len(images)
            most[0] = max(most[0], running[0])
            changed.notify_all()
            assert changed.wait_for(lambda: running[0] >= in_flight or started[0] == 12, 10)
        time.sleep(0.05)
        with changed:
            running[0] -= 1
        return {"value": images[:, 0, 0, 0].astype(np.float32)}

    async def scenario():
        batcher = Batcher(run_batch, BatchingOptions(max_batch_size=2), ThreadPoolExecutor(in_flight), ModelObserver("m", ModelStats()), batches_in_flight=in_flight)
        batcher.start()
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(12):
            image = np.full((2, 2, 3), i, np.uint8)
            futures.append(loop.create_future())
            with batcher.admit():
                batcher.submit(_block(Item, futures[-1], image))
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*futures)
        await batcher.drained()
        await batcher.stop()
        return [float(r.outputs["value"][0]) for r in results]

    assert asyncio.run(scenario()) == [float(i) for i in range(12)]
    assert most[0] == in_flight


def test_a_savedmodel_without_a_predict_signature_still_answers_predict_only(poisoned_server):
    """A hand-made SavedModel may have only `serving_default`: predict-only runs it and drops the map."""
    with Client(poisoned_server.target, model="poison") as client:
        result = client.predict(image(False), return_scores=True)
    logits = np.array([7 * (SIZE * SIZE - 1) / (SIZE * SIZE), 7.0])  # the module's channel means
    assert result.heatmap is None and result.method == "" and result.class_index == 1
    np.testing.assert_allclose(result.probabilities, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)


@pytest.mark.parametrize("options", [dict(counterfactual=True), dict(top_k_maps=2), dict(class_index=-2)])
def test_an_export_without_ranks_or_counterfactuals_says_to_re_export(poisoned_server, options):
    """Its camserve.json predates class ranks and counterfactual codes, as older exports' do."""
    with Client(poisoned_server.target, model="poison") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.explain(image(False), **options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "re-export" in err.value.details()


def _batcher(run_batch, size: int = 2):
    from camserve.server.pipeline.batcher import Batcher, BatchingOptions
    from camserve.server.models.statistics import ModelStats
    from camserve.server.ops.observer import ModelObserver

    return Batcher(run_batch, BatchingOptions(max_batch_size=size), ThreadPoolExecutor(1), ModelObserver("m", ModelStats()), name="m")


def _item(loop):
    from camserve.server.pipeline.batcher import Item

    return _block(Item, loop.create_future())


def _block(item, future, image=None):
    """A one-image item (the batcher's items are blocks of images)."""
    image = np.zeros((2, 2, 3), np.uint8) if image is None else image
    return item(image[np.newaxis], np.array([-1], np.int32), np.array([0], np.int32), None, future)


def test_a_crashed_batcher_is_idle_so_retiring_and_draining_end():
    """After the loop died its callers are answered and nothing will run there:
    drained() returns (it waited forever, so retiring the version and SIGTERM hung)."""

    class Fatal(BaseException):
        pass

    def run_batch(images, class_index, method, contract):
        raise Fatal("the batcher loop cannot survive this")

    async def scenario():
        batcher = _batcher(run_batch)
        batcher.on_crash = lambda err: None
        batcher.start()
        items = [_item(asyncio.get_running_loop()) for _ in range(3)]
        for item in items:
            batcher.submit(item)
        await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        await asyncio.wait_for(batcher.drained(), 5)
        await asyncio.wait_for(batcher.stop(), 5)

    asyncio.run(scenario())


def test_stopping_a_batcher_answers_the_batch_it_was_running():
    """stop() while a batch runs (a forced stop: drain timeout, retirement): the
    batch's callers get UNAVAILABLE rather than waiting for ever."""
    from camserve.server.pipeline.errors import RequestError

    running, release = threading.Event(), threading.Event()

    def run_batch(images, class_index, method, contract):
        running.set()
        release.wait(10)
        return {"logits": np.zeros((len(images), 2), np.float32)}

    async def scenario():
        batcher = _batcher(run_batch)
        batcher.start()
        items = [_item(asyncio.get_running_loop()) for _ in range(2)]
        for item in items:
            batcher.submit(item)
        await asyncio.to_thread(running.wait, 10)
        try:
            await asyncio.wait_for(batcher.stop(), 5)
            return [item.future.exception() for item in items if item.future.done()]
        finally:
            release.set()

    errors = asyncio.run(scenario())
    assert len(errors) == 2 and all(isinstance(e, RequestError) and e.code == grpc.StatusCode.UNAVAILABLE for e in errors)


def test_closing_the_models_does_not_block_the_event_loop(tmp_path):
    """ModelManager.close() waits for each model's threads off the loop (it shut its
    executors down on it: the loop stood still for as long as a batch ran). The model's
    close() here waits until the loop has gone round ten times meanwhile: it never would,
    were close() called on the loop."""
    from camserve.server.models.lifecycle import ModelManager
    from camserve.server.models.config import ModelConfig
    from camserve.server.models.registry import Registry
    from camserve.server.models.sources import RepoSources
    from camserve.server.ops.observer import Observer

    turned = threading.Event()  # the loop went round ten times

    class Model:  # what close() touches of a ServedModel: its batcher and its threads
        name, version = "m", 1

        def __init__(self):
            self.batcher = _batcher(lambda *args: {})
            self.loop_went_round = False

        def close(self):  # as a close waiting for a batch's thread
            self.loop_went_round = turned.wait(10)

    async def scenario():
        registry, model = Registry(), Model()
        registry.add(model)

        async def turns():
            for _ in range(10):
                await asyncio.sleep(0)  # one turn of the loop
            turned.set()

        ticker = asyncio.create_task(turns())
        await ModelManager(RepoSources(tmp_path), ModelConfig(), registry, "/CPU:0", Observer()).close()
        ticker.cancel()
        return model.loop_went_round

    assert asyncio.run(scenario()), "the event loop stood still while the model closed"
