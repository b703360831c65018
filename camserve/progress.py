"""Progress output for long work: numbered steps with timings (export, warm-up),
and a status line for counted work (load tests, folders of images)."""

import math
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


_CLEAR = "\r\033[K"  # back to the line's start, erase it


class StatusLine:
    """One line of status: rewritten in place on a terminal, a new line every
    `log_every` seconds in a log or CI, so that neither floods."""

    def __init__(self, stream=None, log_every: float = 5.0):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.every = 0.5 if self.live else log_every
        self.text = ""
        self._shown = -math.inf

    def update(self, text: str):
        """Shows `text` unless the line was shown less than `every` seconds ago."""
        self.text = text
        if time.monotonic() - self._shown >= self.every:
            self._show()

    def print(self, text: str, file=None):
        """A line of output, kept apart from the status line."""
        if self.live and self.text:
            self.stream.write(_CLEAR)
        print(text, file=file or self.stream, flush=True)
        if self.live and self.text:
            self._show()

    def close(self):
        """Erases a live line: what follows starts on a clean line."""
        if self.live and self.text:
            self.stream.write(_CLEAR)
            self.stream.flush()
        self.text = ""

    def _show(self):
        self._shown = time.monotonic()
        self.stream.write(f"{_CLEAR}{self.text}" if self.live else f"{self.text}\n")
        self.stream.flush()


def clock(seconds: float) -> str:
    """1:05, or 2:01:05 past an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_and_eta(done: int, total: int, elapsed: float) -> str:
    """'85.2/s, ETA 1:43' for `done` of `total` items after `elapsed` seconds."""
    if not done or elapsed <= 0:
        return "ETA --:--"
    rate = done / elapsed
    return f"{rate:.1f}/s, ETA {clock((total - done) / rate)}"
