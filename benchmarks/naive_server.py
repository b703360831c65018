"""The server users build by hand today: a plain gRPC server that answers each
Explain call with the seed-style eager Grad-CAM, one image at a time. Only the
benchmark runs it, as the baseline.

    python benchmarks/naive_server.py --source demo --port 8600
"""

import argparse
import os
import sys
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc_health.v1 import health, health_pb2_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from seed_gradcam import seed_style_gradcam  # noqa: E402

from camserve.export import graph, source  # noqa: E402
from camserve.v1 import camserve_pb2 as pb  # noqa: E402
from camserve.v1 import camserve_pb2_grpc as pb_grpc  # noqa: E402


class NaiveService(pb_grpc.CamServeServicer):
    def __init__(self, model_source: str, weights: str, size):
        src = source.load(model_source, weights, size)
        self.height, self.width = src.model.inputs[0].shape[1:3]
        self.explain_one = seed_style_gradcam(src.model, graph.default_target(src.model)[-1], src.preprocess)

    def Explain(self, request, context):
        raw = request.image.raw
        image = np.frombuffer(raw.pixels, np.uint8).reshape(raw.height, raw.width, raw.channels)
        image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        cam = self.explain_one(image).astype(np.float32)
        return pb.ExplainResponse(
            id=request.id,
            heatmap=pb.Heatmap(height=cam.shape[0], width=cam.shape[1], data=cam.tobytes()),
            timing=pb.Timing(batch_size=1),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--input-size", type=int, nargs=2)
    parser.add_argument("--port", type=int, default=8600)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_CamServeServicer_to_server(NaiveService(args.source, args.weights, args.input_size), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
