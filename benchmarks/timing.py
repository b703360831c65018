"""Throughput measurement that tolerates a shared, noisy machine: configurations
are measured in interleaved rounds and each keeps its best round."""

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


def best_of_rounds(configs: dict, images: int, rounds: int = 3, min_seconds: float = 2.0) -> dict:
    """{name: fn} -> {name: best images/s}; rounds alternate between configs."""
    for fn in configs.values():
        fn()  # warm-up: tracing and compilation stay out of the numbers
    best = dict.fromkeys(configs, 0.0)
    for _ in range(rounds):
        for name, fn in configs.items():
            best[name] = max(best[name], images_per_second(fn, images, min_seconds))
    return best
