"""How late the event loop runs what it was asked to run: every request of every
API, health probes included, goes through this one loop, so work done on it
(a large decode, a long conversion) delays them all. A sampler asks to wake up
every INTERVAL seconds and measures how late it woke; the gauge shows the
worst lag of the last WINDOW samples, so a scrape every few seconds still sees
a short stall, and a lag over WARN_S is logged (at most once a second)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

log = logging.getLogger("camserve.loop")

INTERVAL = 0.1
WINDOW = 50  # samples: the gauge's memory is INTERVAL x WINDOW = 5 s
WARN_S = 0.1


async def sample(gauge, interval: float = INTERVAL):
    loop = asyncio.get_running_loop()
    recent: deque[float] = deque(maxlen=WINDOW)
    last_warning = -1.0
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        now = loop.time()
        lag = max(0.0, now - asked - interval)
        recent.append(lag)
        gauge.set(max(recent))
        if lag > WARN_S and now - last_warning >= 1.0:
            last_warning = now
            log.warning("the event loop ran %.0f ms late: work on the loop is delaying every call", lag * 1e3, extra={"lag_s": round(lag, 4)})
