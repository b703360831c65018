"""What an HTTP infer request's body costs in memory while it is parsed, beyond the
body itself (tracemalloc's peak over parse_infer): JSON tensor data, nested as
tritonclient and most users send it and flat, against Triton's binary extension.
The figure behind the JSON limit of server/http_server.py (JSON_SHARE).

    python benchmarks/json_memory.py [--size 1000]

Prints a table and writes results/json_memory.json.
"""

import argparse
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from camserve.server.transports.http.kserve import parse_infer

sys.path.insert(0, str(Path(__file__).parent))
from request_path import write_results  # noqa: E402


def peak(body: bytes, header_length: str | None) -> int:
    tracemalloc.start()
    parse_infer(body, header_length, "model", "", max_json=len(body))
    _, most = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return most


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000, help="the image is SIZE x SIZE x 3 UINT8")
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)

    def document(data=None, **parameters):
        tensor = {"name": "images", "shape": list(image.shape), "datatype": "UINT8"}
        tensor.update({"data": data} if data is not None else {"parameters": parameters})
        return json.dumps({"inputs": [tensor]}).encode()

    header = document(binary_data_size=image.nbytes)
    bodies = {
        "JSON, nested": (document(image.tolist()), None),
        "JSON, flat": (document(image.ravel().tolist()), None),
        "binary": (header + image.tobytes(), str(len(header))),
    }
    rows = []
    print(f"{'body':14s} {'MB':>8s} {'peak MB':>9s} {'x body':>7s}")
    for name, (body, header_length) in bodies.items():
        most = peak(body, header_length)
        rows.append({"body": name, "body_mb": round(len(body) / 1e6, 2), "peak_mb": round(most / 1e6, 2), "x_body": round(most / len(body), 2)})
        print(f"{name:14s} {len(body) / 1e6:8.2f} {most / 1e6:9.2f} {most / len(body):7.2f}")
    write_results("json_memory", image=list(image.shape), rows=rows)


if __name__ == "__main__":
    main()
