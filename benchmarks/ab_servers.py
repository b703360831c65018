"""Two builds of the server in one run, interleaved: this tree, and another
interpreter's camserve (a baseline commit installed in its own venv), both on
the same exported model, pinned to the same core with the load generator on
another. Each load runs on A, then B, then A, ... for --rounds rounds, so the
machine's drift hits both; the table gives each build's median throughput and
server CPU per image, the ratio B/A, and each against in-process.

    python benchmarks/ab_servers.py --baseline-python /tmp/oldvenv/bin/python \\
        [--loads grpc:32:1 http:4:8 native:4:8 ...] [--rounds 3] [--seconds 5] \\
        [--profile DIR --py-spy PATH]

A load is PROTOCOL:CONCURRENCY:IMAGES_PER_CALL; grpc and http are KServe driven by
Triton's perf_analyzer, native is camserve's own client (ExplainMany when more than
one image a call). Server CPU is split by thread: the event loop (the request
path and the transport), TensorFlow's threads (the model), the rest. With --profile, py-spy records each server for --seconds in
the middle of the first round of each load (`--native --rate 200`, raw stacks in
DIR/LABEL_LOAD.txt) and profile_summary.py's view of the event loop is printed.
Writes results/ab_servers_<label>.json.

A baseline venv with a commit's camserve and this venv's libraries:

    git worktree add /tmp/old COMMIT && pip wheel --no-deps --no-build-isolation -w /tmp/wheel /tmp/old
    python -m venv --without-pip /tmp/oldvenv && pip --python /tmp/oldvenv/bin/python install --no-deps /tmp/wheel/*.whl
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > /tmp/oldvenv/lib/python3.11/site-packages/zz.pth
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from request_path import (  # noqa: E402
    cores, native, perf_analyzer, served, served_model_and_baseline, stat_cpu_seconds, tree_cpu_seconds, write_results,
)

HERE = Path(__file__).parent


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by kind of thread: the event loop (the main thread: the request
    path and the transport), TensorFlow's (tf_*: the model), and the rest (the
    model's caller, the decode pool, gRPC's own threads)."""
    kinds = {"event_loop": 0.0, "tensorflow": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds, name = stat_cpu_seconds(task / "stat"), (task / "comm").read_text().strip()
        except OSError:  # the thread ended
            continue
        kind = "event_loop" if task.name == str(pid) else "tensorflow" if name.startswith("tf_") else "other"
        kinds[kind] += seconds
    return kinds


def run_load(load: str, server, binary: str, pin: list[str], model: str, seconds: float, size) -> dict:
    protocol, concurrency, per_call = load.split(":")
    concurrency, per_call = int(concurrency), int(per_call)
    cpu0, images0, threads0 = tree_cpu_seconds(server.process.pid), served(server), thread_cpu(server.process.pid)
    batches0 = server.metric("camserve_batch_size_count")
    if protocol == "native":
        result = native(pin, server.target, model, concurrency, seconds, size, per_call)
    else:
        url = server.target if protocol == "grpc" else server.http.removeprefix("http://")
        result = perf_analyzer(binary, pin, url, model, concurrency, seconds, per_call, protocol)
    images = served(server) - images0
    cpu = tree_cpu_seconds(server.process.pid) - cpu0
    threads = thread_cpu(server.process.pid)
    return {
        **result,
        "server_cpu_ms_per_image": cpu / max(images, 1) * 1e3,
        **{f"{kind}_ms_per_image": (threads[kind] - threads0[kind]) / max(images, 1) * 1e3 for kind in threads},
        "mean_batch": images / max(server.metric("camserve_batch_size_count") - batches0, 1),
    }


def profiled(load, server, args, pin, size, path: Path) -> dict:
    """The load, with py-spy recording the server from a second in, for --seconds."""
    spy = subprocess.Popen(
        [args.py_spy, "record", "--native", "--rate", "200", "--format", "raw", "--duration", str(int(args.seconds)),
         "--pid", str(server.process.pid), "--output", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        return run_load(load, server, args.perf_analyzer, pin, args.source, args.seconds + 3, size)
    finally:
        spy.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-python", required=True, help="an interpreter whose camserve is the baseline (A)")
    parser.add_argument("--source", default="demo")
    parser.add_argument("--loads", nargs="+", default=["grpc:1:1", "grpc:32:1", "http:32:1", "grpc:4:8", "http:4:8", "native:4:8"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--perf-analyzer", default=os.environ.get("CAMSERVE_PERF_ANALYZER") or shutil.which("perf_analyzer"))
    parser.add_argument("--profile", type=Path, help="a folder for py-spy's raw profiles")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--label", default="")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    from camserve.server.ops.process import ServerProcess

    server_pin, load_pin, one_core = cores()
    # -I: the baseline's own camserve, not this tree's camserve/ from the working directory.
    builds = {"before": (args.baseline_python, "-I", "-m", "camserve"), "after": (sys.executable, "-m", "camserve")}
    samples = {(label, load): [] for label in builds for load in args.loads}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        size, best, best_rate = served_model_and_baseline(args.source, repo, "none", one_core)
        servers = {
            label: ServerProcess(repo, Path(tmp) / f"{label}.log", *args.server_args, prefix=tuple(server_pin), launcher=launcher)
            for label, launcher in builds.items()
        }
        try:
            for server in servers.values():
                server.wait_for("SERVING", timeout=600)
            for round_ in range(args.rounds):
                for load in args.loads:
                    for label, server in servers.items():
                        if args.profile and round_ == 0:
                            args.profile.mkdir(parents=True, exist_ok=True)
                            row = profiled(load, server, args, load_pin, size, args.profile / f"{label}_{load.replace(':', '_')}.txt")
                        else:
                            row = run_load(load, server, args.perf_analyzer, load_pin, args.source, args.seconds, size)
                        samples[label, load].append(row)
                        print(f"  round {round_ + 1} {label:6s} {load:10s} {row['images_per_s']:8.1f}/s "
                              f"cpu {row['server_cpu_ms_per_image']:.3f} ms/img (event loop {row['event_loop_ms_per_image']:.3f}, "
                              f"TensorFlow {row['tensorflow_ms_per_image']:.3f}), mean batch {row['mean_batch']:.1f}", file=sys.stderr)
        finally:
            for server in servers.values():
                server.terminate()
    rows = []
    for load in args.loads:
        row = {"load": load}
        for label in builds:
            runs = samples[label, load]
            row[label] = {
                key: round(statistics.median(r[key] for r in runs), 3)
                for key in ("images_per_s", "server_cpu_ms_per_image", "event_loop_ms_per_image", "tensorflow_ms_per_image",
                            "other_ms_per_image", "p50_ms", "mean_batch")
            }
            row[label]["vs_in_process"] = round(row[label]["images_per_s"] / best_rate, 3)
        row["after_over_before"] = round(row["after"]["images_per_s"] / row["before"]["images_per_s"], 3)
        rows.append(row)
    print("\n| load | before /s | after /s | after/before | x in-process before | after | CPU ms/img before | after "
          "| event loop ms/img before | after | TensorFlow ms/img before | after |")
    print("| --- " * 12 + "|")
    for r in rows:
        b, a = r["before"], r["after"]
        cells = [r["load"], f"{b['images_per_s']:.0f}", f"{a['images_per_s']:.0f}", f"{r['after_over_before']:.2f}",
                 f"{b['vs_in_process']:.2f}", f"{a['vs_in_process']:.2f}"]
        for key in ("server_cpu_ms_per_image", "event_loop_ms_per_image", "tensorflow_ms_per_image"):
            cells += [f"{b[key]:.3f}", f"{a[key]:.3f}"]
        print("| " + " | ".join(cells) + " |")
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            print(f"\n## {path.stem}")
            subprocess.run([sys.executable, str(HERE / "profile_summary.py"), str(path), "--only", "run_forever", "--top", "20"], check=False)
    write_results(f"ab_servers_{args.source}{'_' + args.label if args.label else ''}", in_process={str(k): round(v, 2) for k, v in best.items()},
                  rounds=args.rounds, rows=rows, when_done=time.strftime("%H:%M UTC", time.gmtime()))


if __name__ == "__main__":
    main()
