"""Step-by-step progress for long work (export, warm-up), with timings."""

import sys
import time
from contextlib import contextmanager


class Steps:
    def __init__(self, total: int, stream=None):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def say(self, text: str):
        print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, label: str):
        self.done += 1
        self.say(f"[{self.done}/{self.total}] {label} ...")
        start = time.perf_counter()
        yield
        self.say(f"      {label}: done in {time.perf_counter() - start:.1f}s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
