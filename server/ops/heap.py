"""Python's heap as the server keeps it: what a loaded model allocates lives as
long as the model, so it is kept out of the cyclic collector's passes.

With TensorFlow and a model loaded, a full pass of the collector walks some
320,000 objects and takes about 165 ms, the event loop stalled meanwhile; a
request that allocates many small objects (a JSON tensor of nested lists: 4,096
lists an image) sets one off every few requests (benchmarks/README.md section 16).
Frozen, those objects are skipped by every pass. Thawed and collected first, so
that a retired version's reference cycles go; that pass costs its 165 ms once a
load or retirement, not every few requests."""

import gc


def settle():
    gc.unfreeze()
    gc.collect()
    gc.freeze()
