"""`camserve explain IMAGE... --target HOST:PORT --out DIR`: top-k per image
and an overlay PNG each."""

import sys
from pathlib import Path

from . import connection


def add_parser(subparsers):
    p = subparsers.add_parser("explain", help="explain images with a running server and write overlays")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--target", default="localhost:8500", help="server address HOST:PORT")
    p.add_argument("--out", required=True, type=Path, help="folder for the overlay PNGs")
    p.add_argument("--model", help="model name (default: the server's only model)")
    p.add_argument("--method", default="gradcam", help="gradcam, gradcam++ or guided")
    p.add_argument("--class-index", type=int, help="class to explain (default: top-1)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--resize", default="stretch", choices=["stretch", "center_crop", "letterbox"])
    p.add_argument("--colormap", default="jet")
    p.add_argument("--alpha", type=float, default=0.4)
    p.add_argument("--timeout", type=float, default=60.0)
    connection.add_arguments(p)
    p.set_defaults(run=run)


def _line(result) -> str:
    return ", ".join(f"{p.label or p.index} {p.probability:.3f}" for p in result.top_k)


def run(args) -> int:
    import cv2
    import grpc

    from .client import Client

    args.out.mkdir(parents=True, exist_ok=True)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"camserve explain: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    options = dict(model=args.model, method=args.method, class_index=args.class_index, top_k=args.top_k, resize=args.resize)
    failures, total = 0, len(args.images)
    try:
        with Client(args.target, timeout=args.timeout, **connection.from_arguments(args)) as client:
            stream = client.explain_stream(args.images, timeout=args.timeout, **options)
            for done, result in enumerate(stream, start=1):
                path = args.images[result.index]
                prefix = f"[{done}/{total}] {path.name}"
                if result.error:
                    failures += 1
                    print(f"{prefix}: {result.error[0]}: {result.error[1]}", file=sys.stderr)
                    continue
                image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                target = args.out / f"{path.stem}_{result.method.replace('+', 'p')}.png"
                cv2.imwrite(str(target), cv2.cvtColor(result.overlay(image, args.colormap, args.alpha), cv2.COLOR_RGB2BGR))
                print(f"{prefix}: {_line(result)}  (batch {result.batch_size}, {result.total_ms:.0f} ms) -> {target}")
    except grpc.RpcError as err:
        print(f"camserve explain: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 1 if failures else 0
