"""What each step of an export costs, and loading its SavedModel: a keras.applications
constructor with random weights, exported in the plain graph without verification (the
steps that depend on the model's size alone), then loaded as the server loads it.

    ../.venv/bin/python export_steps.py [--application InceptionV3] [--size 75x75]

Prints the exporter's own step times and one JSON line: {"steps": {...}, "load_s": ...}.
"""

import argparse
import io
import json
import re
import sys
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--application", default="InceptionV3")
    parser.add_argument("--size", default="75x75", help="HxW")
    args = parser.parse_args()
    import tensorflow as tf

    from camserve.export.exporter import ExportOptions, export
    from camserve.progress import Steps

    size = tuple(int(v) for v in args.size.split("x"))
    log = io.StringIO()
    options = ExportOptions(args.application, tempfile.mkdtemp(), "m", weights="none", input_size=size, xla=False, verify=False)
    path = export(options, Steps(6, log))
    started = time.perf_counter()
    tf.saved_model.load(str(path)).signatures["explain"]
    load_s = time.perf_counter() - started
    sys.stderr.write(log.getvalue())
    # "      save to /tmp/x/.staging-1: done in 6.4s" -> {"save to": 6.4}
    steps = {m[1]: float(m[2]) for m in re.finditer(r"^ +([^/\n]+?)(?: /\S*)?: done in ([\d.]+)s$", log.getvalue(), re.M)}
    print(json.dumps({"application": args.application, "size": size, "steps": steps, "load_s": round(load_s, 2)}))


if __name__ == "__main__":
    main()
