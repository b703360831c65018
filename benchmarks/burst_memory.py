"""How much a burst of large images grows the server: N concurrent calls of a
3 MB PNG against the slow test model's shape, the server's peak RSS (VmHWM,
reset just before the burst) minus its RSS before it.

    python benchmarks/burst_memory.py [--calls 160] [--server-args --max-enqueued 8 ...]

The same burst as tests/test_server_lifecycle.py's memory test, as a figure:
prints the outcome counts and the growth in MB, and writes nothing.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import cv2
import grpc
import keras
import numpy as np

from camserve.client import AsyncClient
from camserve.export.exporter import ExportOptions, export
from camserve.server.ops.process import ServerProcess

DEFAULT_ARGS = ["--max-enqueued", "8", "--max-batch-size", "1", "--max-concurrent-rpcs", "16", "--max-message-mb", "4",
                "--max-pixels", "1100000", "--decode-threads", "2"]


def kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def burst(target: str, png: bytes, calls: int) -> list[str]:
    # The model by name: older clients lack health_check, whose default here is harmless.
    async with AsyncClient(target, model="slow", retries=0) as client:

        async def one():
            try:
                await client.explain(png, timeout=60)
                return "OK"
            except grpc.aio.AioRpcError as err:
                return err.code().name

        return await asyncio.gather(*(one() for _ in range(calls)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=160)
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=DEFAULT_ARGS)
    args = parser.parse_args()
    png = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))[1].tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((96, 96, 3))
        x = inputs
        for _ in range(3):
            x = keras.layers.Conv2D(48, 3, padding="same", activation="relu")(x)
        outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
        keras.Model(inputs, outputs).save(Path(tmp) / "slow.keras")
        export(ExportOptions(source=str(Path(tmp) / "slow.keras"), repo=str(Path(tmp) / "repo"), name="slow", preprocess="scale"))
        # ServerProcess by hand (not `serving`): the script also runs against older checkouts.
        server = ServerProcess(Path(tmp) / "repo", Path(tmp) / "server.log", *args.server_args)
        try:
            server.wait_for("SERVING")
            pid = server.process.pid
            asyncio.run(burst(server.target, png, 2))  # gRPC's and the decoders' steady state first
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := now
            before = kb(pid, "VmRSS")
            codes = asyncio.run(burst(server.target, png, args.calls))
            grown = (kb(pid, "VmHWM") - before) / 1024
        finally:
            server.terminate()
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    print(f"{args.calls} calls of {len(png) / 1e6:.1f} MB: {counts}; server RSS grew {grown:.0f} MB at its peak", file=sys.stderr)


if __name__ == "__main__":
    main()
