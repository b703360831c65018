"""Throughput measurement that tolerates a shared, noisy machine: configurations
are measured in interleaved rounds, each round in a new random order (a drift over
the run must not favour whoever is measured first), and each keeps its best round."""

import gc
import random
import time


def images_per_second(fn, images: int, min_seconds: float) -> float:
    """Calls fn() until min_seconds have passed; images processed per second."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * images / elapsed


def interleaved_rounds(configs: dict, rounds: int, measure) -> dict:
    """{name: fn} -> {name: [measure(fn) of each round]}; every round measures every
    configuration, in its own shuffled order (seeded: a rerun measures in the same orders)."""
    for fn in configs.values():
        fn()  # warm-up: tracing and compilation stay out of the numbers
    # TensorFlow's heap is a few hundred thousand objects: a full pass of the cyclic
    # collector over it (about 0.17 s) must not land inside one configuration's round.
    gc.collect()
    gc.freeze()
    order, results = list(configs), {name: [] for name in configs}
    shuffle = random.Random(0).shuffle
    try:
        for _ in range(rounds):
            shuffle(order)
            for name in order:
                results[name].append(measure(configs[name]))
    finally:
        gc.unfreeze()
    return results


def best_of_rounds(configs: dict, images: int, rounds: int = 3, min_seconds: float = 2.0) -> dict:
    """{name: fn} -> {name: best images/s} over interleaved rounds."""
    rates = interleaved_rounds(configs, rounds, lambda fn: images_per_second(fn, images, min_seconds))
    return {name: max(values) for name, values in rates.items()}


# The in-process benchmarks' models: (source, weights, input size). Weights "imagenet"
# on the demo model means its own trained weights; resnet50 has none (no download here).
SOURCES = {"demo": ("demo", "imagenet", None), "resnet50": ("resnet50", "none", (224, 224))}


def run_in_process_benchmark(doc: str, bench_model, table, out_name: str, rounds: int, seconds: float, sources=SOURCES):
    """The command line of an in-process benchmark: bench_model(name, batches, rounds,
    seconds) -> rows per model, table(rows) printed, the rows written as JSON with
    the command and the machine."""
    import argparse
    import json
    import os
    import platform
    import sys
    from pathlib import Path

    import tensorflow as tf

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(sources), choices=list(sources))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=float, default=seconds, help="minimum seconds per measurement")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    args = parser.parse_args()
    rows = [row for name in args.models for row in bench_model(name, args.batches, args.rounds, args.seconds)]
    print(table(rows))
    report = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "tensorflow": tf.__version__,
        "unit": "images/s",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


def rows_against_predict(model: str, batch: int, configs: dict, rounds: int, min_seconds: float) -> list[dict]:
    """best_of_rounds over configs (one named "predict"), as table rows with each
    configuration's ratio to predict; says on stderr how long it took."""
    import sys

    started = time.perf_counter()
    result = best_of_rounds(configs, batch, rounds, min_seconds)
    print(f"  {model} batch {batch}: measured in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return [
        {"model": model, "batch": batch, "function": config, "images_per_s": round(rate, 2), "vs_predict": round(rate / result["predict"], 3)}
        for config, rate in result.items()
    ]
