"""`camserve evaluate PATH... --target HOST:PORT --out DIR`: how faithful each CAM
method is on these images, through a running server; a table, JSON and plots."""

import json
import sys
import time
from pathlib import Path

from . import connection


def add_parser(subparsers):
    p = subparsers.add_parser("evaluate", help="measure how faithful each CAM method is on your images (through a server)")
    p.add_argument("images", nargs="+", type=Path, metavar="PATH", help="images, and folders searched recursively for them")
    p.add_argument("--target", default="localhost:8500", help="server address HOST:PORT")
    p.add_argument("--out", required=True, type=Path, help="folder for evaluation.json, evaluation.md, curves.png, grid.png")
    p.add_argument("--model", help="model name (default: the server's only model)")
    p.add_argument("--methods", nargs="+", help="methods to compare (default: every method the model offers)")
    p.add_argument("--layers", nargs="+", help="compare each method at these target layers or fusions (default: the model's default layer)")
    p.add_argument("--boxes", type=Path, help="CSV path,x0,y0,x1,y1 of the object in each image: adds pointing game and localisation")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds each call may take")
    connection.add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import grpc

    from camserve.progress import StatusLine, clock

    from . import evaluate
    from .client import Client
    from .files import image_files

    files = image_files(args.images, skip=args.out)[: args.limit]
    if not files:
        print(f"camserve evaluate: no images in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 2
    if args.steps < 2:
        print("camserve evaluate: --steps must be at least 2", file=sys.stderr)
        return 2
    try:
        boxes = evaluate.read_boxes(args.boxes) if args.boxes else {}
    except (OSError, KeyError, ValueError) as err:
        print(f"camserve evaluate: cannot read boxes from {args.boxes}: {err!r}", file=sys.stderr)
        return 2
    status, started = StatusLine(), time.monotonic()
    try:
        with Client(args.target, timeout=args.timeout, **connection.from_arguments(args)) as client:
            model = args.model or _only_model(client)
            info = client.get_model(model)
            methods = args.methods or list(info.methods)
            unknown = sorted(set(methods) - set(info.methods)) + sorted(set(args.layers or []) - {*info.layers, *info.fusions})
            if unknown:
                print(f"camserve evaluate: {model} does not offer {', '.join(unknown)}", file=sys.stderr)
                return 2
            if args.layers:
                methods = [f"{method}@{layer}" for method in methods for layer in args.layers]
            result = evaluate.evaluate(client, info, files, boxes, methods, args.steps, status)
    except grpc.RpcError as err:
        status.close()
        print(f"camserve evaluate: {args.target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as err:
        status.close()
        print(f"camserve evaluate: {err}", file=sys.stderr)
        return 1
    status.close()
    for path, why in result.skipped:
        print(f"camserve evaluate: skipped {path}: {why}", file=sys.stderr)
    summary = result.summary()
    args.out.mkdir(parents=True, exist_ok=True)
    context = {"model": model, "images": len(files) - len(result.skipped), "boxes": len(boxes), "steps": args.steps}
    (args.out / "evaluation.json").write_text(json.dumps({**context, "methods": summary}, indent=2) + "\n")
    text = evaluate.table(summary)
    (args.out / "evaluation.md").write_text(text + "\n")
    title = f"{model}: {context['images']} images, top-1 class"
    evaluate.plot_curves(args.out / "curves.png", summary, title)
    evaluate.write_grid(args.out / "grid.png", result)
    print(text)
    print(f"evaluated {context['images']} images in {clock(time.monotonic() - started)}; results in {args.out}", file=sys.stderr)
    return 0


def _only_model(client) -> str:
    models = sorted({m.name for m in client.list_models()})
    if len(models) != 1:
        raise ValueError(f"the server has {len(models)} models ({', '.join(models)}): name one with --model")
    return models[0]
