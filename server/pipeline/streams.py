"""Bidirectional streams: requests are handled concurrently as they are read,
and responses go out in completion order.

A stream has at most `window` requests in flight (read and not yet answered):
the next one is read only when a slot frees, so a sender that writes faster
than the model answers is held back by gRPC's flow control instead of filling
the batch queue, where its surplus would be shed with RESOURCE_EXHAUSTED.
One request's failure becomes its own response (`failed` builds it, each API
its envelope) and the stream goes on."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

from .errors import RequestError, as_request_error

_END = object()  # closes a stream's response queue


async def answered(handle: Callable[[object], Awaitable[object]], request, failed: Callable[[object, RequestError], object]):
    """handle(request), or its failure as that request's own response (streams and ExplainMany)."""
    try:
        return await handle(request)
    except Exception as err:  # noqa: BLE001 - one request's failure travels in its response
        return failed(request, as_request_error(err))


async def completion_order(
    requests: AsyncIterator,
    handle: Callable[[object], Awaitable[object]],
    failed: Callable[[object, RequestError], object],
    window: int,
):
    done: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    pending: set[asyncio.Task] = set()

    async def handle_one(request):
        await done.put(await answered(handle, request, failed))

    async def read_all():
        try:
            incoming = aiter(requests)
            while True:
                await slots.acquire()
                try:
                    request = await anext(incoming)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(handle_one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            await done.put(_END)

    reader = asyncio.create_task(read_all())
    try:
        while (response := await done.get()) is not _END:
            yield response
            slots.release()  # once sent: a client that stops reading holds its window
        await reader  # re-raises a broken request stream
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
