"""When a request must be answered by, and waiting no longer."""

from __future__ import annotations

import asyncio
import time

import grpc

from .errors import RequestError

# The caller's deadline runs from when it sent the call, ours from when it arrived, so
# a caller hanging up at its deadline reaches us with a little of ours left (measured:
# up to 0.4 ms on loopback under load).
DEADLINE_SLACK_S = 0.02


def deadline(context, received: float, timeout_ms: float = 0, default_s: float = 0) -> float | None:
    """The earlier of the call's deadline and the request's own timeout_ms (a
    stream's images have no other), on the time.monotonic() clock; for a call
    that brings neither, `default_s` (--default-timeout-s; 0: none)."""
    remaining = context.time_remaining() if context is not None else None
    ends = [received + remaining] if remaining is not None else []
    if timeout_ms:
        ends.append(received + timeout_ms / 1e3)
    if not ends and default_s:
        ends.append(received + default_s)
    return min(ends, default=None)


def of_the_call(remaining: float | None, timeout_ms: float = 0) -> bool:
    """Whether deadline() gives a request its gRPC call's deadline, from the call's
    time_remaining() when the request arrived: the call brings one, and the
    request's own timeout_ms (if any) ends no sooner. gRPC ends such a call
    DEADLINE_EXCEEDED when it passes, so a call of several requests that it ended
    must end so too, never OK with their errors inside: whether gRPC's cancel or
    by()'s answers come first is a race (on a loaded machine gRPC's lost, the
    caller's own timer too, and the caller got OK)."""
    return remaining is not None and not (timeout_ms and timeout_ms / 1e3 < remaining)


async def by(deadline: float | None, future: asyncio.Future):
    """The batcher drops an expired request when it forms the next batch; this
    answers at the deadline itself, even while an earlier batch still runs. A
    unary call is cut there by gRPC anyway; a stream's image is not."""
    if deadline is None:
        return await future
    try:
        return await asyncio.wait_for(future, deadline - time.monotonic())
    except TimeoutError:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the image was explained") from None


async def all_or_none(work: list) -> list:
    """The results of `work` (awaitables), or the first failure once the rest have
    been cancelled and have ended: a request's images never outlive the request."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(each) for each in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
