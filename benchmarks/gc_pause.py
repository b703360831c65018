"""How long one full pass of Python's cyclic collector stalls a process that holds
Keras models, and what gc.freeze() leaves of it: the pause a timed probe in the
suite's own process (tests/collector.py) or the server's event loop
(server/ops/heap.py) would take. Builds keras.applications models with random
weights one after another and times gc.collect() after each, unfrozen and frozen:

    python benchmarks/gc_pause.py [--models MobileNetV3Small MobileNet ResNet50 ...] [--rounds 3]

Prints a table and writes results/gc_pause.json (best of --rounds, in ms).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from request_path import write_results  # noqa: E402


def full_pass_ms(rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV3Small", "MobileNet", "ResNet50", "EfficientNetB0", "DenseNet121"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import keras

    rows, held = [], []
    for name in ["(keras imported)", *args.models]:
        if name != "(keras imported)":
            held.append(getattr(keras.applications, name)(weights=None, input_shape=(96, 96, 3)))
        unfrozen = full_pass_ms(args.rounds)
        gc.freeze()
        frozen = full_pass_ms(args.rounds)
        gc.unfreeze()
        rows.append({"after": name, "objects": len(gc.get_objects()), "full_pass_ms": round(unfrozen, 1), "frozen_ms": round(frozen, 2)})
        print(f"{name:>18} {rows[-1]['objects']:>9} objects  full pass {unfrozen:7.1f} ms  frozen {frozen:6.2f} ms", flush=True)
    write_results("gc_pause", rounds=args.rounds, rows=rows)


if __name__ == "__main__":
    main()
