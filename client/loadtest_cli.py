"""`camserve loadtest --target HOST:PORT ...`: drive a server and report."""

import functools
import sys
import time
from pathlib import Path

from . import connection
from .files import image_files


def add_parser(subparsers):
    p = subparsers.add_parser("loadtest", help="measure a server: throughput and latency, with a plot")
    p.add_argument("--target", default="localhost:8500")
    p.add_argument("--api", choices=["native", "kserve"], default="native")
    p.add_argument("--model", help="model name (required for kserve; default: the server's only model)")
    p.add_argument("--concurrency", type=int, nargs="*", default=None, help="closed-loop levels (default 1 8 32)")
    p.add_argument("--rate", type=float, nargs="*", default=[], help="open-loop levels, requests/s (Poisson arrivals)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--images", type=Path, help="a folder of images (recursively) to send encoded (default: generated pixels)")
    p.add_argument("--generate", type=int, default=16, help="how many random images to generate")
    p.add_argument("--method", default="gradcam", help="native API only")
    p.add_argument("--predict-only", action="store_true", help="ask for no heatmap: the model's predict signature runs")
    p.add_argument("--images-per-call", type=int, default=1, help="images in each call (native: ExplainMany; KServe: [N,...])")
    p.add_argument("--out", type=Path, default=Path("loadtest"), help="folder for report.json, report.csv, report.png")
    connection.add_arguments(p)
    p.set_defaults(run=run)


def _images(args, client):
    """(images to send, model name): encoded files from --images, else random
    pixels at the model's input size."""
    import numpy as np

    if args.images:
        files = image_files([args.images]) if args.images.is_dir() else []
        if not files:
            raise SystemExit(f"camserve loadtest: no images in {args.images}")
        return [p.read_bytes() for p in files], args.model
    models = client.list_models()
    info = next((m for m in models if m.name == args.model), None) if args.model else (models[0] if len(models) == 1 else None)
    if info is None:
        raise SystemExit(f"camserve loadtest: say which model with --model (served: {', '.join(m.name for m in models)})")
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (info.input_height, info.input_width, 3), dtype=np.uint8) for _ in range(args.generate)], info.name


def run(args) -> int:
    import grpc

    from .client import Client
    from .loadtest import kserve_sender, native_sender, run_levels
    from .report import plot, write_csv, write_json

    secure = connection.from_arguments(args)
    closed = [1, 8, 32] if args.concurrency is None and not args.rate else (args.concurrency or [])
    try:
        with Client(args.target, timeout=10, **secure) as client:
            images, model = _images(args, client)
    except grpc.RpcError as err:
        print(f"camserve loadtest: {args.target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if args.api == "kserve":
        if not model:
            print("camserve loadtest: --api kserve needs --model", file=sys.stderr)
            return 2
        factory = functools.partial(
            kserve_sender, args.target, model, images_per_call=args.images_per_call, predict_only=args.predict_only, **secure
        )
    else:
        factory = functools.partial(
            native_sender, args.target, model=model, method=args.method, images_per_call=args.images_per_call,
            predict_only=args.predict_only, **secure,
        )
    if args.images_per_call < 1:
        print("camserve loadtest: --images-per-call must be at least 1", file=sys.stderr)
        return 2
    print(f"loadtest {args.api} {args.target} model {model or '(default)'}: {len(images)} images", file=sys.stderr)
    reports = run_levels(factory, images, closed, args.rate, args.duration, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    context = {
        "target": args.target,
        "api": args.api,
        "predict_only": args.predict_only,
        "model": model,
        "images": str(args.images) if args.images else f"{len(images)} generated",
        "images_per_call": args.images_per_call,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "camserve " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "camserve loadtest",
    }
    write_json(args.out / "report.json", reports, context)
    write_csv(args.out / "report.csv", reports)
    plot(args.out / "report.png", reports, f"camserve {args.api} API, model {model or 'default'}")
    print(f"report: {args.out}/report.json, report.csv, report.png", file=sys.stderr)
    return 0
