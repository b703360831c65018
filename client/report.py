"""Load-test results as files people read: JSON (everything), CSV (a row a
level) and a PNG with the latency-throughput curve and latency histograms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .loadtest import LevelReport


def write_json(path: Path, reports: list[LevelReport], context: dict):
    data = {**context, "levels": [r.summary() for r in reports]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, reports: list[LevelReport]):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mode", "level", "sent", "succeeded", "errors", "throughput", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_batch_size"])
        for r in reports:
            lat = r.latency_ms
            errors = ";".join(f"{k}={v}" for k, v in sorted(r.errors.items()))
            writer.writerow(
                [r.mode, r.level, r.sent, r.succeeded, errors, f"{r.throughput:.2f}", *(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "max")), f"{r.mean_batch_size:.2f}"]
            )


def plot(path: Path, reports: list[LevelReport], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, hist) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in ("closed", "open"):
        rows = [r for r in reports if r.mode == mode and r.succeeded]
        if not rows:
            continue
        x = [r.throughput for r in rows]
        for key, style in (("p50", "-o"), ("p99", "--s")):
            curve.plot(x, [r.latency_ms[key] for r in rows], style, label=f"{mode} loop {key}")
        for r in rows:
            curve.annotate(f"{'c' if mode == 'closed' else 'λ'}={r.level:.0f}", (r.throughput, r.latency_ms["p50"]), fontsize=7)
    curve.set_xlabel("throughput (successful requests/s)")
    curve.set_ylabel("latency (ms)")
    curve.set_yscale("log")
    curve.set_title("latency vs throughput")
    curve.legend(fontsize=8)
    curve.grid(True, alpha=0.3)
    for r in reports:
        if r.latencies_ms:
            label = f"{'c' if r.mode == 'closed' else 'λ'}={r.level:.0f}"
            hist.hist(r.latencies_ms, bins=40, histtype="step", label=label)
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("requests")
    hist.set_title("latency histograms")
    hist.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
