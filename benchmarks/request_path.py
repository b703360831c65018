"""What the request path costs: the server pinned to one core, the load generator
to another, against the same SavedModel in-process on the server's core.

    python benchmarks/request_path.py [--source demo] [--concurrency 1 32] [--seconds 8]
                                      [--workers 1 2] [--perf-analyzer PATH] [--dialects all]
                                      [--server-args ...]

Per API (KServe over gRPC and over HTTP driven by Triton's perf_analyzer,
native by camserve's own load tester, native with 8 images per ExplainMany call;
with --dialects, the dialects of DIALECTS driven by this script's own asyncio
load generator, one for all of them: KServe gRPC, KServe HTTP with binary
tensors and with JSON, TF Serving's gRPC Predict and REST :predict, each asking
for the maps) and concurrency: the mean batch the model ran,
throughput, p50/p99, the server's CPU seconds per image (from /proc), and the
ratio to the best in-process throughput (batch 1/8/32) on one of the server's
cores. The load generator gets the last core and the server the others; with a
single core nothing is pinned and the table says so. With several --workers
counts each gets its own server (`serve --workers N`), and the rows also show
how the calls spread over the workers (each one's share of an even split).
Prints a table and writes results/request_path_<source>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from workload import exported, random_images  # noqa: E402

HERE = Path(__file__).parent
TICKS = os.sysconf("SC_CLK_TCK")


def cores() -> tuple[list[str], list[str], list[str]]:
    """taskset prefixes for (server, load generator, in-process run): the load
    generator on the last core, the server on the others."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2 or shutil.which("taskset") is None:
        return [], [], []
    server = ",".join(str(c) for c in usable[:-1])
    return ["taskset", "-c", server], ["taskset", "-c", str(usable[-1])], ["taskset", "-c", str(usable[0])]


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc/.../stat file (a process's or one of its threads')."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def tree_cpu_seconds(pid: int) -> float:
    """The server's CPU: the process and its live children (--workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


IN_PROCESS = """
import json, sys, time, numpy as np, tensorflow as tf
explain = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
h, w = int(sys.argv[2]), int(sys.argv[3])
best = {}
for n in (1, 8, 32):
    args = dict(images=np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8),
                class_index=np.full(n, -1, np.int32), method=np.zeros(n, np.int32))
    explain(**args)
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2.0:
            explain(**args)["heatmap"].numpy(); calls += 1
        rate = calls * n / (time.perf_counter() - start)
        best[n] = max(best.get(n, 0), rate)
    if n == 1:
        start = time.perf_counter()
        for _ in range(200):
            explain(**args)["heatmap"].numpy()
        best["latency_ms"] = (time.perf_counter() - start) / 200 * 1e3
print(json.dumps(best))
"""


def served_model_and_baseline(source: str, repo: Path, weights: str, pin: list[str]):
    """Exports `source` into `repo`; returns (its image size, the best in-process rates
    on one of the server's cores, the best of them), printing them."""
    version = exported(source, repo, source, weights)
    size = random_images(version, 1)[0].shape[:2]
    best = in_process(version, size, pin)
    print(f"in-process on one of the server's cores: {best}", file=sys.stderr)
    return size, best, max(v for k, v in best.items() if k != "latency_ms")


def in_process(version_dir: Path, size, pin: list[str]) -> dict:
    out = subprocess.run([*pin, sys.executable, "-c", IN_PROCESS, str(version_dir), str(size[0]), str(size[1])],
                         capture_output=True, text=True, check=True)
    best = json.loads(out.stdout.strip().splitlines()[-1])
    return {(int(k) if k.isdigit() else k): v for k, v in best.items()}


def perf_analyzer(
    binary: str, pin: list[str], target: str, model: str, concurrency: int, seconds: float, batch: int = 1, protocol: str = "grpc"
) -> dict:
    env = dict(os.environ)
    for lib in Path(binary).resolve().parent.parent.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"):
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    command = [*pin, binary, "-m", model, "-u", target, "-i", protocol, "-b", str(batch), "--concurrency-range", str(concurrency)]
    command += ["-p", str(int(seconds * 1000)), "--max-trials", "10", "--stability-percentage", "100"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    out = done.stdout
    if "Throughput:" not in out:
        raise RuntimeError(f"perf_analyzer failed: {(done.stdout + done.stderr)[-1500:]}")
    throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", out).group(1))
    p50 = float(re.search(r"p50 latency: (\d+) usec", out).group(1)) / 1e3
    p99 = float(re.search(r"p99 latency: (\d+) usec", out).group(1)) / 1e3
    return {"images_per_s": throughput, "p50_ms": p50, "p99_ms": p99}


NATIVE = """
import asyncio, json, sys, time, numpy as np
from camserve.client import AsyncClient
target, model, concurrency, seconds, per_call = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
h, w, connections = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
images = list(np.random.default_rng(0).integers(0, 256, (16, h, w, 3), dtype=np.uint8))
async def main():
    latencies, done = [], 0
    async with AsyncClient(target, model=model, retries=0, connections=connections) as client:
        async def caller(k):
            nonlocal done
            end = time.monotonic() + seconds + 1.0
            measure = time.monotonic() + 1.0
            while (now := time.monotonic()) < end:
                if per_call == 1:
                    await client.explain(images[k % 16])
                else:
                    await client.explain_many(images[:per_call], per_call=per_call, calls=1)
                if now >= measure:
                    latencies.append((time.monotonic() - now) * 1e3); done += per_call
        start = time.monotonic()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    p50, p99 = np.percentile(latencies, [50, 99])
    print(json.dumps({"images_per_s": done / seconds, "p50_ms": p50, "p99_ms": p99}))
asyncio.run(main())
"""


def native(pin: list[str], target: str, model: str, concurrency: int, seconds: float, size, per_call: int = 1) -> dict:
    # A connection per caller (up to 32): a server's --workers each take whole connections.
    args = [target, model, str(concurrency), str(seconds), str(per_call), str(size[0]), str(size[1]), str(min(concurrency, 32))]
    out = subprocess.run([*pin, sys.executable, "-c", NATIVE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# The dialects the asyncio load generator speaks (--dialects), and their rows' names.
DIALECTS = {
    "kserve-grpc": "KServe gRPC (asyncio)",
    "kserve-http": "KServe HTTP binary (asyncio)",
    "kserve-json": "KServe HTTP JSON (asyncio)",
    "tfserving-grpc": "TF Serving gRPC Predict (asyncio)",
    "tfserving-rest": "TF Serving REST :predict (asyncio)",
}

# A closed loop like NATIVE's (`concurrency` callers, a second of warm-up, then
# `seconds` measured), for every dialect of DIALECTS: one gRPC channel (as
# perf_analyzer opens), or one HTTP/1.1 connection per caller. Each call sends the
# same prepared request of `per_call` uint8 images [N,H,W,3] and asks for every
# output of the explain signature (scores and maps); answers are checked once
# before the loop, and in it only for their status, so that the generator's
# core spends little on parsing them.
ASYNC_LOAD = """
import asyncio, json, sys, time, numpy as np
dialect, target, http, model = sys.argv[1:5]
concurrency, seconds, per_call, h, w = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
images = np.random.default_rng(0).integers(0, 256, (per_call, h, w, 3), dtype=np.uint8)
MAPS = {"heatmap", "heatmap_scale"}

def grpc_call():
    import grpc
    channel = grpc.aio.insecure_channel(target)
    if dialect == "kserve-grpc":
        from camserve.kserve import grpc_predict_v2_pb2 as kpb, grpc_predict_v2_pb2_grpc as kgrpc
        request = kpb.ModelInferRequest(model_name=model)
        request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
        request.raw_input_contents.append(images.tobytes())
        send = kgrpc.GRPCInferenceServiceStub(channel).ModelInfer
        def check(answer):
            return {o.name for o in answer.outputs}, answer.outputs[0].shape[0]
    else:
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, "explain"
        tensor = request.inputs["images"]
        tensor.dtype = types_pb2.DT_UINT8
        tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in images.shape)
        tensor.tensor_content = images.tobytes()
        send = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        def check(answer):
            return set(answer.outputs), answer.outputs["heatmap"].tensor_shape.dim[0].size
    async def call():
        return await send(request, timeout=60)
    return call, check, channel.close

def http_call():
    import aiohttp
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    headers = {"Content-Type": "application/json"}
    if dialect == "tfserving-rest":
        url = f"{http}/v1/models/{model}:predict"
        body = json.dumps({"signature_name": "explain", "instances": images.tolist()}).encode()
        def check(payload, _):
            predictions = json.loads(payload)["predictions"]
            return set(predictions[0]), len(predictions)
    else:
        url = f"{http}/v2/models/{model}/infer"
        shape = list(images.shape)
        if dialect == "kserve-json":
            body = json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": "UINT8", "data": images.ravel().tolist()}]}).encode()
        else:
            tensor = {"name": "images", "shape": shape, "datatype": "UINT8", "parameters": {"binary_data_size": images.nbytes}}
            header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
            body = header + images.tobytes()
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        def check(payload, length):
            outputs = json.loads(payload[: int(length)] if length else payload)["outputs"]
            return {o["name"] for o in outputs}, outputs[0]["shape"][0]
    async def call():
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
            return payload, response.headers.get("Inference-Header-Content-Length")
    return call, (lambda answer: check(*answer)), session.close

async def main():
    call, check, close = grpc_call() if dialect.endswith("grpc") else http_call()
    names, n = check(await call())
    assert MAPS <= names and n == per_call, (names, n)
    latencies, done, errors = [], 0, 0
    async def caller():
        nonlocal done, errors
        end = time.monotonic() + seconds + 1.0
        measure = time.monotonic() + 1.0
        while (now := time.monotonic()) < end:
            try:
                await call()
            except Exception as err:
                errors += 1
                if errors == 1:
                    print(f"first error: {err!r}"[:500], file=sys.stderr)
                continue
            if now >= measure:
                latencies.append((time.monotonic() - now) * 1e3); done += per_call
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await close()
    p50, p99 = np.percentile(latencies, [50, 99])
    print(json.dumps({"images_per_s": done / seconds, "p50_ms": p50, "p99_ms": p99, "errors": errors}))
asyncio.run(main())
"""


def dialect_load(
    pin: list[str], dialect: str, server, model: str, concurrency: int, seconds: float, size, per_call: int = 1
) -> dict:
    """One level of ASYNC_LOAD against `server` in `dialect` (a key of DIALECTS)."""
    args = [dialect, server.target, server.http, model, str(concurrency), str(seconds), str(per_call), str(size[0]), str(size[1])]
    done = subprocess.run([*pin, sys.executable, "-c", ASYNC_LOAD, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {dialect} load failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def served(server) -> float:
    return server.metric("camserve_executed_requests_total")


def worker_calls(server, workers: int) -> list[float]:
    return [server.metric("camserve_worker_calls_total", worker=str(i)) for i in range(workers)]


def run_server(args, repo: Path, tmp: Path, workers: int, size, best: dict, best_rate: float, server_pin, load_pin) -> list[dict]:
    from camserve.server.ops.process import ServerProcess

    rows = []
    extra = ["--workers", str(workers)] if workers > 1 else []
    server = ServerProcess(repo, tmp / f"server{workers}.log", *extra, *args.server_args, prefix=tuple(server_pin))
    try:
        server.wait_for("SERVING", timeout=600)
        loads = []
        if args.perf_analyzer:
            loads += [("kserve (perf_analyzer)", c, 1) for c in args.concurrency]
            loads += [("kserve HTTP (perf_analyzer -i http)", c, 1) for c in args.concurrency]
        loads += [("native (camserve client)", c, 1) for c in args.concurrency]
        loads += [("native, 8 images per ExplainMany", max(1, c // 8), 8) for c in args.concurrency if c >= 8]
        if args.perf_analyzer:
            loads += [("kserve, 8 images per call", max(1, c // 8), 8) for c in args.concurrency if c >= 8]
            loads += [("kserve HTTP, 8 images per call", max(1, c // 8), 8) for c in args.concurrency if c >= 8]
        # The asyncio generator's dialects side by side at each level, so that drift hits them alike.
        levels = [(c, 1) for c in args.concurrency] + [(max(1, c // 8), 8) for c in args.concurrency if c >= 8]
        loads += [(DIALECTS[d], c, n) for c, n in levels for d in args.dialects]
        for api, concurrency, per_call in loads:
            cpu0, images0, calls0 = tree_cpu_seconds(server.process.pid), served(server), worker_calls(server, workers)
            batches0 = server.metric("camserve_batch_size_count")
            dialect = next((d for d, name in DIALECTS.items() if name == api), None)
            if dialect:
                result = dialect_load(load_pin, dialect, server, args.source, concurrency, args.seconds, size, per_call)
            elif api.startswith("kserve HTTP"):
                url = server.http.removeprefix("http://")
                result = perf_analyzer(args.perf_analyzer, load_pin, url, args.source, concurrency, args.seconds, per_call, "http")
            elif api.startswith("kserve"):
                result = perf_analyzer(args.perf_analyzer, load_pin, server.target, args.source, concurrency, args.seconds, per_call)
            else:
                result = native(load_pin, server.target, args.source, concurrency, args.seconds, size, per_call)
            cpu = tree_cpu_seconds(server.process.pid) - cpu0
            images = served(server) - images0
            batches = server.metric("camserve_batch_size_count") - batches0
            calls = [b - a for a, b in zip(calls0, worker_calls(server, workers))]
            row = {
                "workers": workers,
                "api": api,
                "generator": ("asyncio, grpc.aio" if dialect.endswith("grpc") else "asyncio, aiohttp") if dialect
                else "camserve AsyncClient" if api.startswith("native") else "perf_analyzer",
                "concurrency": concurrency,
                "images_per_call": per_call,
                **{k: round(v, 2) for k, v in result.items()},
                "server_cpu_ms_per_image": round(cpu / max(images, 1) * 1e3, 3),
                "vs_in_process": round(result["images_per_s"] / best_rate, 3),
                "p50_vs_in_process_batch1": round(result["p50_ms"] / best["latency_ms"], 2),
                "worker_shares": [round(c * workers / max(sum(calls), 1), 2) for c in calls],
                "mean_batch": round(images / max(batches, 1), 1),  # images a model run took, padding not counted
            }
            rows.append(row)
            print(f"  N={workers} {api:34s} c={concurrency:<3d} {row['images_per_s']:8.1f}/s p50 {row['p50_ms']:6.2f} ms "
                  f"p99 {row['p99_ms']:6.2f} ms cpu {row['server_cpu_ms_per_image']:.3f} ms/img "
                  f"x{row['vs_in_process']:.2f} of in-process, mean batch {row['mean_batch']}, shares {row['worker_shares']}", file=sys.stderr)
    finally:
        server.terminate()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--perf-analyzer", default=os.environ.get("CAMSERVE_PERF_ANALYZER") or shutil.which("perf_analyzer"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="`serve --workers` counts, one server each")
    parser.add_argument("--dialects", nargs="+", default=[], choices=[*DIALECTS, "all"],
                        help="rows from the asyncio load generator (DIALECTS), beside perf_analyzer's and the native ones")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="extra `camserve serve` flags")
    parser.add_argument("--label", default="", help="a name for this configuration in the results file")
    args = parser.parse_args()
    if "all" in args.dialects:
        args.dialects = list(DIALECTS)
    server_pin, load_pin, one_core = cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        size, best, best_rate = served_model_and_baseline(args.source, repo, args.weights, one_core)
        for workers in args.workers:
            rows += run_server(args, repo, Path(tmp), workers, size, best, best_rate, server_pin, load_pin)
    from camserve.server.models.device import select_device

    write_results(
        f"request_path_{args.source}{'_' + args.label if args.label else ''}",
        label=args.label,
        pinned=bool(server_pin),
        server_cores=server_pin[-1] if server_pin else "all",
        device=select_device(),
        in_process={str(k): round(v, 2) for k, v in best.items()},
        rows=rows,
    )


def write_results(stem: str, **fields):
    """results/STEM.json: the command that made it, when, and `fields`; printed too."""
    result = {"command": "python " + " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **fields}
    (HERE / "results" / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
