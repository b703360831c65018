"""`camserve explain PATH... --target HOST:PORT --out DIR`: images, and folders
of images, over one stream; the top-k and an overlay PNG per image as its answer
arrives, and DIR/results.csv at the end."""

import sys
import time
from pathlib import Path

from camserve import colors

from . import connection
from .client import WINDOW

COLUMNS = ("path", "class", "label", "probability", "heatmap_file", "box", "error")


def add_parser(subparsers):
    p = subparsers.add_parser("explain", help="explain images with a running server and write overlays")
    p.add_argument("images", nargs="+", type=Path, metavar="PATH", help="images, and folders searched recursively for them")
    p.add_argument("--target", default="localhost:8500", help="server address HOST:PORT")
    p.add_argument("--out", required=True, type=Path, help="folder for the overlay PNGs and results.csv")
    p.add_argument("--model", help="model name (default: the server's only model)")
    p.add_argument("--method", help="a CAM method the model offers: gradcam, gradcam++, hirescam, ... (default: the model's default method)")
    p.add_argument("--class-index", type=int, help="class to explain (default: top-1)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--resize", default="stretch", choices=["stretch", "center_crop", "letterbox"])
    p.add_argument("--colormap", default="jet")
    p.add_argument("--alpha", type=float, default=0.4)
    p.add_argument(
        "--background", type=colors.rgb, default="FFFFFF", metavar="RRGGBB",
        help="hex colour under transparent pixels, on the server and in the overlays (default: white)",
    )
    p.add_argument(
        "--box", type=float, nargs="?", const=0.15, metavar="THRESHOLD",
        help="draw the box around the largest region above THRESHOLD x the map's maximum (default 0.15) and list it in results.csv",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each image may take on the server")
    p.add_argument("--window", type=int, default=WINDOW, help="images sent ahead of their answers")
    connection.add_arguments(p)
    p.set_defaults(run=run)


def _line(result) -> str:
    return ", ".join(f"{p.label or p.index} {p.probability:.3f}" for p in result.top_k)


def _write_overlay(path: Path, result, target: Path, box, args) -> str:
    """The heatmap (and box) drawn over the image as read here; an error message if that fails."""
    import cv2

    from camserve.images import read_rgb

    from camserve import boxes

    try:
        image = read_rgb(path, args.background)  # upright and composited, as the server explained it
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = result.overlay(image, args.colormap, args.alpha)
        if box is not None:
            picture = boxes.draw(picture, box)
        if not cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {target}")
    except (cv2.error, OSError, ValueError) as err:
        return f"OVERLAY: {err}"
    return ""


def _row(path: Path, result, output: Path, args) -> list:
    """The image's results.csv row, its overlay written (to `output`_<method>.png);
    the last column is the error."""
    if result.error:
        return [path, "", "", "", "", "", f"{result.error[0]}: {result.error[1]}"]
    target = output.with_name(f"{output.name}_{result.method.replace('+', 'p')}.png")
    box = result.box(args.box) if args.box is not None else None
    error = _write_overlay(path, result, target, box, args)
    where = f"{box.x0} {box.y0} {box.x1} {box.y1}" if box else ""
    return [path, result.class_index, result.label, f"{result.probability:.6f}", "" if error else target, where, error]


def run(args) -> int:
    import csv

    import grpc

    from camserve.progress import StatusLine, clock, rate_and_eta

    from .client import Client
    from .files import image_files, mirrored
    from camserve.overlay import colormap

    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        print(f"camserve explain: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        colormap(args.colormap)
        if args.box is not None and not 0.0 < args.box <= 1.0:
            raise ValueError(f"--box takes a fraction of the map's maximum in (0, 1], not {args.box}")
    except ValueError as err:
        print(f"camserve explain: {err}", file=sys.stderr)
        return 2
    files = image_files(args.images, skip=args.out)
    if not files:
        print(f"camserve explain: no images in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 2
    outputs = mirrored(args.images, files, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    options = dict(
        model=args.model, method=args.method, class_index=args.class_index, top_k=args.top_k, resize=args.resize,
        background=args.background,
    )

    rows: list[list | None] = [None] * len(files)  # in input order, whatever order answers come in
    failures, unanswered = 0, "not answered: interrupted"
    status, started = StatusLine(), time.monotonic()
    try:
        with Client(args.target, timeout=args.timeout, **connection.from_arguments(args)) as client:
            stream = client.explain_stream(files, timeout=args.timeout, window=args.window, **options)
            for done, result in enumerate(stream, start=1):
                path = files[result.index]
                rows[result.index] = row = _row(path, result, outputs[result.index], args)
                failures += bool(row[-1])
                progress = rate_and_eta(done, len(files), time.monotonic() - started)
                status.update(f"explain: {done}/{len(files)} images, {failures} failed, {progress}")
                if row[-1]:
                    status.print(f"{path}: {row[-1]}", file=sys.stderr)
                else:
                    timing = f"(batch {result.batch_size}, {result.total_ms:.0f} ms)"
                    status.print(f"[{done}/{len(files)}] {path}: {_line(result)}  {timing} -> {row[4]}", file=sys.stdout)
    except grpc.RpcError as err:
        unanswered = f"{err.code().name}: {err.details()}"
        status.print(f"camserve explain: {unanswered}", file=sys.stderr)
    except KeyboardInterrupt:
        status.print("camserve explain: interrupted", file=sys.stderr)
    finally:
        status.close()
        results = args.out / "results.csv"
        with open(results, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(row or [path, "", "", "", "", "", unanswered] for path, row in zip(files, rows))
    answered = sum(row is not None for row in rows)
    elapsed = time.monotonic() - started
    print(
        f"explained {answered - failures} of {len(files)} images in {clock(elapsed)} ({answered / elapsed:.1f}/s), "
        f"{len(files) - answered + failures} failed; results in {results}",
        file=sys.stderr,
    )
    return 0 if answered == len(files) and not failures else 1
