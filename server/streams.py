"""Bidirectional streams: every request is handled concurrently as it is read,
and responses go out in completion order."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

_END = object()  # closes a stream's response queue


async def completion_order(requests: AsyncIterator, handle: Callable[[object], Awaitable[object]]):
    done: asyncio.Queue = asyncio.Queue()
    pending: set[asyncio.Task] = set()

    async def handle_one(request):
        await done.put(await handle(request))

    async def read_all():
        try:
            async for request in requests:
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
        await reader  # re-raises a broken request stream
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
