"""`camserve export SOURCE --repo DIR --name NAME ...`"""

import argparse
import sys

from .choices import HEADS, INPUT_CONTRACTS, PREPROCESS_MODES


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 224x224, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return h, w


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="Keras model -> XLA-compiled SavedModel with Grad-CAM")
    p.add_argument("source", help="a .keras/.h5/.hdf5 file, a keras.applications name (ResNet50V2 or resnet50_v2, ...), or 'demo'")
    p.add_argument("--repo", help="model repository folder (required unless --list-layers)")
    p.add_argument("--name", help="model name in the repository (required unless --list-layers)")
    p.add_argument("--list-layers", action="store_true", help="print SOURCE's candidate target layers with their output shapes, the default and branches marked, and exit")
    p.add_argument("--version", type=int, help="version to write (default: one more than the highest)")
    p.add_argument(
        "--layer", action="append",
        help="target layer name or dotted path into a nested model (vgg16.block5_conv3); repeat it for maps at several "
        "layers (the first is the default; requests pick one or fuse them)",
    )
    p.add_argument("--preprocess", choices=sorted(PREPROCESS_MODES), help="pixel preprocessing (automatic for applications)")
    p.add_argument("--labels", help="text file with one class name per line")
    p.add_argument("--weights", default="imagenet", help="for applications: imagenet, none, or a weights file")
    p.add_argument("--input-size", type=_size, help="HxW, required when the model's input size is open")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the float64 comparison")
    p.add_argument(
        "--head",
        choices=HEADS,
        help="what the last layer computes (default: recognised from the model; see README, Heads)",
    )
    p.add_argument("--no-xla", dest="xla", action="store_false", help="plain graph mode instead of XLA (faster for some small models on CPU; measure)")
    p.add_argument(
        "--input-contract", choices=INPUT_CONTRACTS, default="images",
        help="images (default): serving_default is camserve's explain on uint8 RGB images; model: serving_default is also "
        "what model.export() serves (the model's own preprocessed float input, its output as output_0, or a Keras 2 "
        "SavedModel's own names), for TF Serving clients, and explain_input explains that input; explain and predict "
        "keep taking uint8 images (prepared as --preprocess says)",
    )
    p.add_argument("--custom-objects", help="module or .py file to import before loading (registered custom layers)")
    p.set_defaults(run=run)


def list_layers(args) -> int:
    """The layers --layer can name: every 4-D output, with its shape; the default and the layers off
    the main path (branches) marked."""
    from . import graph, source, tokens

    try:
        model = source.load(args.source, args.weights, args.input_size, args.custom_objects).model
    except (ValueError, RuntimeError, OSError) as err:
        print(f"camserve export: error: {err}", file=sys.stderr)
        return 1
    found = graph.candidates(model)
    try:
        path, note = graph.default(model)
        default = ".".join(path)
    except graph.TargetLayerError as err:
        default, note = None, f"error: {err}"
    width = max((len(c.path) for c in found), default=0)
    for c in found:
        h, w, channels = c.shape[1:]
        # "branch": off the main path, so never the default (it sees part of what reaches the output).
        marks = [mark for mark, on in (("branch", not c.main), ("1x1: no map", (h, w) == (1, 1))) if on]
        mark = "  <- default" if c.path == default else (f"  ({', '.join(marks)})" if marks else "")
        print(f"{c.path:<{width}}  {h} x {w} x {channels}{mark}")
    for t in tokens.candidates(model):  # token sequences [N, T, D] explained on their patch grid (tokens.py)
        mark = "  <- default" if t.path == default else ("" if t.main else "  (branch)")
        print(f"{t.path:<{width}}  {t.tokens} tokens x {t.channels}: {t.grid}{mark}")
    if note:
        print(f"camserve export: {note}", file=sys.stderr)
    return 0 if default else 1


def run(args) -> int:
    from .exporter import ExportOptions, export

    if args.list_layers:
        return list_layers(args)
    if not args.repo or not args.name:
        print("camserve export: error: --repo and --name are required (unless --list-layers)", file=sys.stderr)
        return 2
    options = {k: getattr(args, k) for k in ExportOptions.__dataclass_fields__}
    try:
        path = export(ExportOptions(**options))
    except (ValueError, RuntimeError) as err:
        print(f"camserve export: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
