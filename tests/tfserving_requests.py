"""TF Serving Predict requests as tensorflow-serving-api builds them, for tests
that need no TensorFlow beyond its protobufs."""

import numpy as np

DT_UINT8 = 4  # tensorflow.DataType


def images_request(model: str, pixels: np.ndarray, signature: str = "", label: str = ""):
    """Predict of uint8 images [N,H,W,3] as `images`, in tensor_content."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if label:
        request.model_spec.version_label = label
    tensor = request.inputs["images"]
    tensor.dtype = DT_UINT8
    for size in pixels.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = np.ascontiguousarray(pixels, np.uint8).tobytes()
    return request
