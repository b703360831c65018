"""KServe v2 / Open Inference Protocol: its messages <-> the pipeline, for gRPC
(grpc/kserve.py) and HTTP (http/kserve.py) alike.

Tensors as in the exported signature: inputs `images` (UINT8 [N,H,W,3]) or
`image_bytes` (BYTES [N], encoded images), optional `class_index` and `method`
(INT32 [N], or [N,1] as Triton's tools shape per-image scalars); outputs
`logits`, `probabilities`, `class_index`, `heatmap`, `heatmap_scale`, as raw
contents, only those requested when any are.

Metadata and ModelConfig advertise `images` only: perf_analyzer fills every
input it is told of with random data, and random class indices and method
codes would be refused, so a default `perf_analyzer -m MODEL` run must not see
them. `class_index` (-r: the r-th highest class), `method`, `counterfactual`
(INT32 or BOOL), `layer` and the alternative `image_bytes` are accepted
all the same (tritonclient users send them by name); ModelConfig's
`parameters` list them for tools that look. The request parameter `timeout`
(microseconds) is a deadline, as in Triton.
"""

from __future__ import annotations

import functools
import time

import grpc
import numpy as np

import camserve
from camserve.kserve import grpc_predict_v2_pb2 as kpb

from ..models.registry import Registry, version_number
from ..pipeline.batcher import PREDICT
from ..pipeline.deadlines import deadline
from ..pipeline.errors import RequestError, invalid
from ..pipeline.explain import Pipeline
from ..pipeline.inputs import image_batch
from ..pipeline.limits import Limits
from ..pipeline.model import Model
from .tensors import INLINE_TYPED_VALUES, decode_inputs, encode_output, typed_values

OUTPUTS = ("logits", "probabilities", "class_index", "heatmap", "heatmap_scale")
INT_TYPES = ("INT32", "INT64")


def _request_parameters(request) -> float:
    """The request's parameters, checked; returns Triton's `timeout` (given in
    microseconds, as tritonclient's `infer(timeout=...)` sends it) in milliseconds,
    a deadline on top of the call's own; 0: none. Sequence parameters are refused:
    there is no sequence batching to honour them."""
    parameters = request.parameters
    if any(name.startswith("sequence_") for name in parameters):
        raise invalid("sequence parameters (sequence_id, sequence_start, sequence_end) are not supported: models here are stateless")
    if "timeout" not in parameters:
        return 0
    value = parameters["timeout"]
    kind = value.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param") or getattr(value, kind) < 0:
        raise invalid("parameter 'timeout' is a number of microseconds (int64, at least 0)")
    return getattr(value, kind) / 1000


def _tensor(name, datatype, shape):
    return kpb.ModelMetadataResponse.TensorMetadata(name=name, datatype=datatype, shape=shape)


class KServe:
    """The protocol's answers as messages; failures raise RequestError."""

    def __init__(self, registry: Registry, pipeline: Pipeline):
        self.registry = registry
        self.pipeline = pipeline

    def model_ready(self, name: str, version: str) -> bool:
        """Not ready (rather than an error) for a model or version that is not served;
        INVALID_ARGUMENT for a request that names none."""
        try:
            self.registry.get(name, version_number(version))
        except RequestError as err:
            if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return False
        return self.registry.process.ready

    @staticmethod
    def server_metadata() -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="camserve", version=camserve.__version__, extensions=["statistics"])

    def model_metadata(self, name: str, version: str) -> kpb.ModelMetadataResponse:
        model = self.registry.get(name, version_number(version))
        h, w = model.metadata["feature_size"]
        return kpb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in sorted(self.registry.versions.get(model.name, {}))],
            platform="tensorflow_savedmodel",
            inputs=[_tensor("images", "UINT8", [-1, model.height, model.width, 3])],
            outputs=[
                _tensor("logits", "FP32", [-1, model.num_classes]),
                _tensor("probabilities", "FP32", [-1, model.num_classes]),
                _tensor("class_index", "INT32", [-1]),
                _tensor("heatmap", "FP32", [-1, h, w]),
                _tensor("heatmap_scale", "FP32", [-1]),
            ],
        )

    def model_config(self, name: str, version: str) -> kpb.ModelConfigResponse:
        model = self.registry.get(name, version_number(version), serving=False)
        h, w = model.metadata["feature_size"]
        options = model.batcher.options
        fp32, int32 = kpb.TYPE_FP32, kpb.TYPE_INT32
        return kpb.ModelConfigResponse(
            config=kpb.ModelConfig(
                name=model.name,
                platform="tensorflow_savedmodel",
                backend="camserve",
                max_batch_size=options.max_batch_size,
                input=[
                    kpb.ModelInput(name="images", data_type=kpb.TYPE_UINT8, format=kpb.ModelInput.FORMAT_NHWC, dims=[model.height, model.width, 3]),
                ],
                output=[
                    kpb.ModelOutput(name="logits", data_type=fp32, dims=[model.num_classes]),
                    kpb.ModelOutput(name="probabilities", data_type=fp32, dims=[model.num_classes]),
                    kpb.ModelOutput(name="class_index", data_type=int32, dims=[]),
                    kpb.ModelOutput(name="heatmap", data_type=fp32, dims=[h, w]),
                    kpb.ModelOutput(name="heatmap_scale", data_type=fp32, dims=[]),
                ],
                dynamic_batching=kpb.ModelDynamicBatching(
                    preferred_batch_size=list(model.batcher.ladder),
                    max_queue_delay_microseconds=int(options.batch_wait * 1e6),
                ),
                parameters={
                    name: kpb.ModelParameter(string_value=value)
                    for name, value in (
                        ("head", model.head),
                        ("target_layer", model.metadata["target_layer"]),
                        ("methods", ",".join(model.methods)),
                        ("layers", ",".join(model.layers)),
                        ("fusions", ",".join(model.fusions)),
                        (
                            "optional_inputs",
                            "class_index INT32 [N] (-r: the r-th highest class), method INT32 [N], "
                            "counterfactual INT32 or BOOL [N], layer INT32 [N] (an index into layers, then fusions), "
                            "image_bytes BYTES [N]",
                        ),
                    )
                },
            )
        )

    def model_statistics(self, name: str, version: str) -> kpb.ModelStatisticsResponse:
        models = [self.registry.get(name, version_number(version), serving=False)] if name else self.registry.all()
        return kpb.ModelStatisticsResponse(model_stats=[self._statistics(m) for m in models])

    async def infer(self, request, context, api: str) -> kpb.ModelInferResponse:
        received = time.monotonic()
        pipeline = self.pipeline
        with pipeline.calls.accounted(api, context) as call:
            call.model = model = self.registry.get(request.model_name, version_number(request.model_version))
            # Typed contents cost ~0.1 us a value to convert: many of them, off the loop.
            inline = typed_values(request) <= INLINE_TYPED_VALUES
            tensors = image_inputs(model, request, pipeline.limits) if inline else await pipeline.on_pool(
                functools.partial(image_inputs, model, request, pipeline.limits)
            )
            wanted = [o.name for o in request.outputs] or list(OUTPUTS)
            unknown = [name for name in wanted if name not in OUTPUTS]
            if unknown:
                raise invalid(f"unknown output(s) {unknown}; outputs are {', '.join(OUTPUTS)}")
            images, class_index, method = tensors
            if not {"heatmap", "heatmap_scale"} & set(wanted):  # no map asked for: the predict signature
                method = [PREDICT] * len(images)
            until = deadline(context, received, _request_parameters(request), pipeline.limits.default_timeout_s)
            outputs, call.queue_s = await pipeline.run_images(model, images, class_index, method, until)
            response = kpb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
            for name in wanted:
                response.raw_output_contents.append(encode_output(response.outputs.add(name=name), outputs[name]))
            return response

    @staticmethod
    def _statistics(model)  -> kpb.ModelStatistics:
        s = model.stats

        def duration(d):
            return kpb.StatisticDuration(count=d.count, ns=d.ns)

        def counted(d):  # input/output staging is inside compute; Triton's tools want equal counts
            return kpb.StatisticDuration(count=d.count)

        return kpb.ModelStatistics(
            name=model.name,
            version=str(model.version),
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=kpb.InferStatistics(
                success=duration(s.success),
                fail=duration(s.fail),
                queue=duration(s.queue),
                compute_input=counted(s.compute),
                compute_infer=duration(s.compute),
                compute_output=counted(s.compute),
            ),
            batch_stats=[
                kpb.InferBatchStatistics(
                    batch_size=size, compute_input=counted(d), compute_infer=duration(d), compute_output=counted(d)
                )
                for size, d in sorted(s.batches.items())
            ],
        )


def image_inputs(model: Model, request, limits: Limits):
    return image_batch(model, decode_inputs(request), limits)
