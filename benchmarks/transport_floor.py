"""What the transport alone costs: the real `camserve serve` (gRPC and HTTP, the
same interceptors, limits and event loop) with KServe `infer` cut out and
replaced by a canned answer of the right shapes, so that a call pays for the
transport, the request's parsing and the response's serialisation, and
nothing of camserve's pipeline or the model. Measured like request_path.py
(server pinned to one core, perf_analyzer to another) beside the full server
in the same run:

    python benchmarks/transport_floor.py [--source demo] [--concurrency 1 32] [--seconds 5]

It tells how much of the request path is Python gRPC / HTTP itself, which no
trimming of camserve's code can remove. Prints a table and writes
results/transport_floor_<source>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from request_path import cores, perf_analyzer, served_model_and_baseline, tree_cpu_seconds, write_results  # noqa: E402


# The server with KServe.infer answering at once: zeros of the served
# model's output shapes (N from the request); the model's statistics count the
# call, as perf_analyzer wants to read them back.
CANNED = """
import sys
import numpy as np
from camserve.kserve import grpc_predict_v2_pb2 as kpb
from camserve.server.transports import kserve
from camserve.server.transports.tensors import encode_output

async def infer(self, request, context, api):
    n = request.inputs[0].shape[0]
    model = self.registry.get(request.model_name)
    model.stats.batch(n, 0.0)
    model.stats.request(True, 0.0, 0.0)
    shapes = {"logits": ("f4", (model.num_classes,)), "probabilities": ("f4", (model.num_classes,)), "class_index": ("i4", ()),
              "heatmap": ("f4", tuple(model.metadata["feature_size"])), "heatmap_scale": ("f4", ())}
    response = kpb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name in [o.name for o in request.outputs] or list(shapes):
        dtype, shape = shapes[name]
        response.raw_output_contents.append(encode_output(response.outputs.add(name=name), np.zeros((n, *shape), dtype)))
    return response

kserve.KServe.infer = infer
from camserve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def measure(binary, server, pin, model, concurrency, seconds, protocol, per_call=1) -> dict:
    url = server.target if protocol == "grpc" else server.http.removeprefix("http://")
    cpu0 = tree_cpu_seconds(server.process.pid)
    started = time.monotonic()
    result = perf_analyzer(binary, pin, url, model, concurrency, seconds, per_call, protocol)
    cpu = tree_cpu_seconds(server.process.pid) - cpu0
    # perf_analyzer runs a warm-up and several trials: the CPU spent over its whole run,
    # divided by the images it would have sent at the measured rate over that time.
    images = result["images_per_s"] * (time.monotonic() - started)
    return {**result, "server_cpu_ms_per_image": round(cpu / images * 1e3, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--perf-analyzer", default=None, help="default: $CAMSERVE_PERF_ANALYZER or perf_analyzer on PATH")
    args = parser.parse_args()
    from camserve.server.ops.process import ServerProcess

    args.perf_analyzer = args.perf_analyzer or os.environ.get("CAMSERVE_PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not args.perf_analyzer:
        sys.exit("perf_analyzer not found (benchmarks/README.md section 4)")
    server_pin, load_pin, one_core = cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        size, best, best_rate = served_model_and_baseline(args.source, repo, "none", one_core)
        for kind in ("full server", "transport only"):
            launcher = (sys.executable, "-c", CANNED) if kind == "transport only" else None
            server = ServerProcess(repo, Path(tmp) / f"{kind}.log", prefix=tuple(server_pin), launcher=launcher)
            try:
                server.wait_for("SERVING", timeout=600)
                for protocol in ("grpc", "http"):
                    for concurrency, per_call in [(c, 1) for c in args.concurrency] + [(max(1, max(args.concurrency) // 8), 8)]:
                        result = measure(args.perf_analyzer, server, load_pin, args.source, concurrency, args.seconds, protocol, per_call)
                        row = {"server": kind, "protocol": protocol, "concurrency": concurrency, "images_per_call": per_call,
                               **{k: round(v, 3) for k, v in result.items()}, "vs_in_process": round(result["images_per_s"] / best_rate, 3)}
                        rows.append(row)
                        print(f"  {kind:15s} {protocol:4s} c={concurrency:<3d} x{per_call} {row['images_per_s']:8.1f}/s "
                              f"p50 {row['p50_ms']:6.2f} ms cpu {row['server_cpu_ms_per_image']:.3f} ms/img", file=sys.stderr)
            finally:
                server.terminate()
    write_results(
        f"transport_floor_{args.source}", pinned=bool(server_pin), in_process={str(k): round(v, 2) for k, v in best.items()}, rows=rows
    )


if __name__ == "__main__":
    main()
