"""Waiting on a server that changes on its own time (a load, a drain, a worker's
restart): polled, never a fixed sleep that a slow machine outlasts."""

import time


def eventually(condition, timeout: float = 60.0, every: float = 0.05) -> bool:
    """Whether `condition()` held within `timeout` seconds, asked every `every`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def settle(server, timeout: float = 10.0) -> float:
    """Waits until no request is in flight or queued on `server` (a ServerProcess; the
    batcher drops abandoned and expired requests as it reaches them): what is left then."""

    def left():
        return server.metric("camserve_in_flight_requests") + server.metric("camserve_queue_depth")

    eventually(lambda: left() == 0, timeout)
    return left()
