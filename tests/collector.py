"""Python's cyclic collector, kept out of what a test times or paces."""

import contextlib
import gc


@contextlib.contextmanager
def frozen():
    """While a test paces a burst, the pace is the client's, not this process's
    collector's: a full collection stalls a process holding Keras models 135-180 ms here
    at best, and the first pass after the models' allocations 190-300 ms (320 000-430 000
    objects; benchmarks/README.md section 17). The collector skips frozen objects."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
