"""The batcher's items are blocks of images: a block is split where it does not
fit a batch, blocks share batches, and each is answered once, with its own rows
in order. A real Batcher on a real event loop and thread pool; the model is a
function whose outputs say which image each row came from."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from camserve.server.models.statistics import ModelStats
from camserve.server.ops.observer import ModelObserver
from camserve.server.pipeline.batcher import MODEL, PREDICT, Batcher, BatchingOptions, Item
from camserve.server.pipeline.errors import RequestError


def _block(loop, first: int, count: int, method: int = 0, deadline=None) -> Item:
    """`count` images whose pixels hold their numbers first, first + 1, ..."""
    images = np.broadcast_to(np.arange(first, first + count, dtype=np.uint8)[:, None, None, None], (count, 2, 2, 3)).copy()
    return Item(images, np.full(count, -1, np.int32), np.full(count, method, np.int32), deadline, loop.create_future())


def _together(batcher: Batcher, items):
    """Items admitted at once, as one call's: a batch waits for all of them."""
    with batcher.admit(sum(item.rows for item in items)) as admission:
        for item in items:
            batcher.submit(item)
            admission.decoded(item.rows)


def _run(scenario, run_batch=None, contracts=None, **options):
    batches = []
    contracts = [] if contracts is None else contracts

    def record(images, class_index, method, contract):
        batches.append((images[:, 0, 0, 0].tolist(), method.tolist()))
        contracts.append((contract, images.dtype))
        if run_batch:
            run_batch(images)
        return {"value": images[:, 0, 0, 0].astype(np.float32), "method": method.copy()}

    async def main():
        batcher = Batcher(record, BatchingOptions(**options), ThreadPoolExecutor(1), ModelObserver("m", ModelStats()), name="m")
        batcher.start()
        try:
            return await scenario(batcher, asyncio.get_running_loop())
        finally:
            await batcher.stop()

    return asyncio.run(main()), batches


def test_a_block_larger_than_the_batch_is_split_and_answered_once_in_order():
    async def scenario(batcher, loop):
        item = _block(loop, 0, 11)
        batcher.submit(item)
        return await item.future

    result, batches = _run(scenario, max_batch_size=4)
    assert result.outputs["value"].tolist() == list(range(11))
    # Split 4 + 4 + 3; the last batch padded to the ladder's 4 with zeros.
    assert [rows for rows, _ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 0]]


def test_blocks_share_batches_and_each_gets_its_own_rows():
    async def scenario(batcher, loop):
        items = [_block(loop, 0, 3), _block(loop, 10, 3), _block(loop, 20, 2)]
        _together(batcher, items)  # admitted together: the first batch waits for the rest
        return [await item.future for item in items]

    results, batches = _run(scenario, max_batch_size=4)
    assert [r.outputs["value"].tolist() for r in results] == [[0, 1, 2], [10, 11, 12], [20, 21]]
    assert [rows for rows, _ in batches] == [[0, 1, 2, 10], [11, 12, 20, 21]]


def test_a_whole_block_that_fills_the_batch_runs_as_it_is():
    seen = []

    async def scenario(batcher, loop):
        item = _block(loop, 0, 4)
        batcher.submit(item)
        await item.future
        return item

    item, _ = _run(scenario, run_batch=seen.append, max_batch_size=4)
    assert seen[0] is item.images, "no copy of a block that is a batch already"


def test_a_batch_never_mixes_input_contracts_and_pads_with_its_own_dtype():
    """The model's own float input (export --input-contract model) and camserve's uint8
    images run through different signatures: never in one batch."""
    contracts = []

    async def scenario(batcher, loop):
        images = _block(loop, 0, 2)
        tensors = _block(loop, 10, 2)
        tensors = Item(tensors.images.astype(np.float32), tensors.class_index, tensors.method, None, tensors.future, contract=MODEL)
        more_images = _block(loop, 20, 1)
        _together(batcher, [images, tensors, more_images])
        return [await item.future for item in (images, tensors, more_images)]

    results, batches = _run(scenario, contracts=contracts, max_batch_size=4)
    assert [r.outputs["value"].tolist() for r in results] == [[0, 1], [10, 11], [20]]
    assert [rows for rows, _ in batches] == [[0, 1, 20, 0], [10, 11]]
    assert contracts == [("images", np.uint8), ("model", np.float32)]


def test_admission_counts_images_not_calls():
    async def scenario(batcher, loop):
        with batcher.admit(3):
            with pytest.raises(RequestError) as full:
                batcher.admit(2)
        return full.value

    refused, _ = _run(scenario, max_batch_size=4, max_enqueued=4)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "3 images admitted" in refused.message


def test_a_block_of_the_other_kind_keeps_its_place_for_the_next_batch():
    async def scenario(batcher, loop):
        explain, predict, more = _block(loop, 0, 2), _block(loop, 10, 2, method=PREDICT), _block(loop, 20, 2)
        _together(batcher, (explain, predict, more))
        return [await item.future for item in (explain, predict, more)]

    results, batches = _run(scenario, max_batch_size=4)
    assert [rows for rows, _ in batches] == [[0, 1, 20, 21], [10, 11]]
    assert batches[1][1] == [PREDICT, PREDICT]
    assert [r.outputs["value"].tolist() for r in results] == [[0, 1], [10, 11], [20, 21]]


def test_a_failing_block_fails_alone_and_its_batch_mates_are_answered():
    def run_batch(images):
        if 13 in images[:, 0, 0, 0]:
            raise ValueError("row 13 poisons its batch")

    async def scenario(batcher, loop):
        good, bad = _block(loop, 0, 2), _block(loop, 12, 2)
        _together(batcher, (good, bad))
        answered = await good.future
        with pytest.raises(RequestError) as failed:
            await bad.future
        return answered, failed.value

    (answered, failed), _ = _run(scenario, run_batch=run_batch, max_batch_size=4)
    assert answered.outputs["value"].tolist() == [0, 1]
    assert failed.code == grpc.StatusCode.INTERNAL


def test_a_block_past_its_deadline_is_dropped_with_its_untaken_rows():
    async def scenario(batcher, loop):
        late = _block(loop, 0, 6, deadline=0.0)  # long past on the monotonic clock
        on_time = _block(loop, 20, 2)
        _together(batcher, (late, on_time))
        answered = await on_time.future
        with pytest.raises(RequestError) as expired:
            await late.future
        return answered, expired.value, batcher.queued

    (answered, expired, queued), batches = _run(scenario, max_batch_size=4)
    assert expired.code == grpc.StatusCode.DEADLINE_EXCEEDED and answered.outputs["value"].tolist() == [20, 21]
    assert queued == 0 and [rows for rows, _ in batches] == [[20, 21]]
