"""What is refused before work, and the statuses of the metadata calls."""

import grpc
import numpy as np
import pytest

from camserve import geometry
from camserve.client import Client
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc


def test_a_crop_at_the_models_size_does_not_pin_the_decoded_image():
    image = np.zeros((4000, 32, 3), np.uint8)  # a center crop of exactly 32x32: no resize
    canvas, _ = geometry.fit(image, 32, 32, geometry.CENTER_CROP)
    assert canvas.shape == (32, 32, 3) and not np.shares_memory(canvas, image)


def test_an_original_size_heatmap_too_large_to_send_is_refused_before_queueing(tmp_path, server_repo):
    from camserve.server.ops.process import serving

    image = np.zeros((560, 560, 3), np.uint8)  # 0.9 MiB of pixels fit the 1 MiB limit; their float map (1.2 MiB) does not
    with serving(server_repo, tmp_path / "server.log", "--max-message-mb", "1", "--max-batch-size", "1") as server:
        executed = server.metric("camserve_executed_requests_total")
        with Client(server.target, model="tiny", max_message_mb=1) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.explain(image, original_size=True)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "message limit" in err.value.details()
            assert client.explain(image, original_size=True, heatmap_type="uint8").heatmap.shape == (560, 560)
        assert server.metric("camserve_executed_requests_total") == executed + 1, "the refused one never ran"
        assert server.metric("camserve_requests_total", code="INVALID_ARGUMENT") == 1


def test_bad_versions_in_metadata_calls_are_invalid_or_not_found(server):
    with grpc.insecure_channel(server.target) as channel:
        native = pb_grpc.CamServeStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            native.GetModel(pb.GetModelRequest(model="tiny", version=-1), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            native.GetModel(pb.GetModelRequest(model="tiny", version=7), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "(loaded: 1)" in err.value.details(), "the registry's one NOT_FOUND wording"
        # An empty name means the one model, as Explain takes it.
        assert native.GetModel(pb.GetModelRequest(), timeout=10).name == "tiny"
    # KServe through tritonclient (our KServe stubs and its cannot share a process).
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.target)
    with pytest.raises(InferenceServerException) as err:
        client.is_model_ready("tiny", "abc")
    assert "INVALID_ARGUMENT" in str(err.value) and "not a version number" in str(err.value)
    assert not client.is_model_ready("tiny", "7") and client.is_model_ready("tiny", "1")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("tiny", "abc")
    assert "INVALID_ARGUMENT" in str(err.value)
