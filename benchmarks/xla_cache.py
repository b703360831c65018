"""What TensorFlow's persistent XLA cache saves a fresh process (tests/README.md, "Compile
once"): the demo export loaded from its SavedModel, its first call at batch sizes 1, 2 and 4,
and the process's memory mappings after each. Run it twice with the same --cache: the first
run fills the cache, the second reads it; without --cache, nothing is cached.

    ../.venv/bin/python xla_cache.py --repo /tmp/xla/repo [--cache /tmp/xla/cache]
"""

import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="where the demo model is (or is first) exported")
    parser.add_argument("--cache", help="the persistent cache's folder (none: no cache)")
    args = parser.parse_args()
    if args.cache:  # before TensorFlow is imported
        os.environ["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={args.cache}"
    import tensorflow as tf

    from camserve.export.exporter import ExportOptions, export

    path = os.path.join(args.repo, "shapes", "1")
    if not os.path.exists(path):
        export(ExportOptions(source="demo", repo=args.repo, name="shapes"))
    height, width = json.load(open(os.path.join(path, "assets.extra", "camserve.json")))["input_size"]
    explain = tf.saved_model.load(path).signatures["serving_default"]
    rows = []
    for n in (1, 2, 4):
        started = time.perf_counter()
        explain(images=tf.zeros([n, height, width, 3], tf.uint8), class_index=-tf.ones([n], tf.int32), method=tf.zeros([n], tf.int32))
        with open("/proc/self/maps") as maps:
            rows.append({"batch": n, "first_call_s": round(time.perf_counter() - started, 2), "mappings": sum(1 for _ in maps)})
        print(f"batch {n}: first call {rows[-1]['first_call_s']:.2f} s, {rows[-1]['mappings']} mappings", file=sys.stderr)
    print(json.dumps({"cache": args.cache, "rows": rows}))


if __name__ == "__main__":
    main()
