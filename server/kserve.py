"""KServe v2 / Open Inference Protocol on the same port and the same batchers.

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
from camserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc

from .batcher import PREDICT
from .decode import decode_encoded, decode_raw
from .errors import RequestError, abort, invalid
from .handler import Handler, all_or_none, check_targets, deadline, encoded_is_cheap, fit, raw_is_cheap
from .models import Registry, ServedModel
from .options import Limits
from .streams import completion_order
from .tensors import INLINE_TYPED_VALUES, decode_inputs, encode_output, typed_values

OUTPUTS = ("logits", "probabilities", "class_index", "heatmap", "heatmap_scale")
INT_TYPES = ("INT32", "INT64")


def version_number(text: str) -> int:
    """A KServe version string as a version number; "" (and "0"): the latest. ASCII digits
    only (isdigit() alone takes "²", which int() refuses, and "１"), and within int64, as
    the native API's version: anything else is no version, refused on every transport."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
        raise invalid(f"model_version {text!r} is not a version number")
    return int(text)


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


def _per_image(tensors: dict, name: str, n: int, default: int, kinds: str = "i") -> list[int]:
    if name not in tensors:
        return [default] * n
    values = tensors[name]
    if isinstance(values, list) or values.dtype.kind not in kinds:
        raise invalid(f"input {name!r} must be {' or '.join({'i': 'INT32', 'b': 'BOOL'}[k] for k in kinds)} [{n}]")
    if values.shape not in ((n,), (n, 1)):
        raise invalid(f"input {name!r} has shape {list(values.shape)}; expected [{n}], one per image")
    return values.reshape(n).tolist()


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, handler: Handler):
        self.registry = registry
        self.handler = handler

    # -- health and metadata -------------------------------------------------
    async def ServerLive(self, request, context):
        return kpb.ServerLiveResponse(live=self.registry.live)

    async def ServerReady(self, request, context):
        return kpb.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(self, request, context):
        """Not ready (rather than an error) for a model or version that is not served;
        INVALID_ARGUMENT for a request that names none."""
        try:
            self.registry.get(request.name, version_number(request.version))
        except RequestError as err:
            if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                await context.abort(err.code, err.message)
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=self.registry.ready)

    async def ServerMetadata(self, request, context):
        return kpb.ServerMetadataResponse(name="camserve", version=camserve.__version__, extensions=["statistics"])

    async def ModelMetadata(self, request, context):
        model = await self._model(request.name, request.version, context)
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

    async def ModelConfig(self, request, context):
        model = await self._model(request.name, request.version, context, ready=False)
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
                    max_queue_delay_microseconds=int(options.batch_timeout * 1e6),
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

    async def ModelStatistics(self, request, context):
        if request.name:
            models = [await self._model(request.name, request.version, context, ready=False)]
        else:
            models = self.registry.all()
        return kpb.ModelStatisticsResponse(model_stats=[self._statistics(m) for m in models])

    # -- inference -------------------------------------------------------------
    async def ModelInfer(self, request, context):
        try:
            return await self.infer(request, context, "kserve")
        except Exception as err:  # noqa: BLE001 - every failure leaves as a status
            await abort(context, err)

    async def ModelStreamInfer(self, request_iterator, context):
        async def infer_one(request):
            return kpb.ModelStreamInferResponse(infer_response=await self.infer(request, context, "kserve_stream"))

        def failed(request, failure):
            response = kpb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return kpb.ModelStreamInferResponse(error_message=f"{failure.code.name}: {failure.message}", infer_response=response)

        async for response in completion_order(request_iterator, infer_one, failed, self.handler.limits.stream_window):
            yield response

    async def infer(self, request, context, api: str) -> kpb.ModelInferResponse:
        received = time.monotonic()
        with self.handler.accounted(api, context) as call:
            call.model = model = self.registry.get(request.model_name, version_number(request.model_version))
            # Typed contents cost ~0.1 us a value to convert: many of them, off the loop.
            inline = typed_values(request) <= INLINE_TYPED_VALUES
            tensors = image_inputs(model, request, self.handler.limits) if inline else await self.handler.on_pool(
                functools.partial(image_inputs, model, request, self.handler.limits)
            )
            wanted = [o.name for o in request.outputs] or list(OUTPUTS)
            unknown = [name for name in wanted if name not in OUTPUTS]
            if unknown:
                raise invalid(f"unknown output(s) {unknown}; outputs are {', '.join(OUTPUTS)}")
            images, class_index, method = tensors
            if not {"heatmap", "heatmap_scale"} & set(wanted):  # no map asked for: the predict signature
                method = [PREDICT] * len(images)
            until = deadline(context, received, _request_parameters(request), self.handler.limits.default_timeout_s)
            with model.batcher.admit(len(images)) as admission:  # all or none, before any decoding
                runs = [self.handler.run_image(model, admission, *image, [(c, m)], until) for image, c, m in zip(images, class_index, method)]
                # One image (the common case) needs no tasks of its own; a failed image
                # cancels its siblings, and admission ends only once they have ended.
                answers = [await runs[0]] if len(runs) == 1 else await all_or_none(runs)
            results = [(found[0], extra) for found, extra in answers]
            call.queue_s = max(result.queue_s for result, _ in results)
            response = kpb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
            for name in wanted:
                tensor = response.outputs.add(name=name)
                rows = [result.outputs[name] for result, _ in results]
                stacked = rows[0][np.newaxis] if len(rows) == 1 else np.stack(rows)
                response.raw_output_contents.append(encode_output(tensor, stacked))
            return response

    async def _model(self, name: str, version: str, context, ready: bool = True) -> ServedModel:
        try:
            if ready:
                return self.registry.get(name, version_number(version))
            model = self.registry.find(name, version_number(version))
            if model is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version or 'latest'} is not served here")
            return model
        except RequestError as err:
            await context.abort(err.code, err.message)

    @staticmethod
    def _statistics(model: ServedModel) -> kpb.ModelStatistics:
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


def image_inputs(model: ServedModel, request, limits: Limits):
    """([(prepare function, inline)] per image, class indices, method codes), all validated."""
    tensors = decode_inputs(request)
    known = {"images", "image_bytes", "class_index", "method", "counterfactual", "layer"}
    if set(tensors) - known:
        raise invalid(f"unknown input(s) {sorted(set(tensors) - known)}; inputs are {', '.join(sorted(known))}")
    if ("images" in tensors) == ("image_bytes" in tensors):
        raise invalid("send exactly one of `images` (UINT8 [N,H,W,3]) and `image_bytes` (BYTES [N])")
    limit = model.batcher.options.max_enqueued
    if "images" in tensors:
        images = tensors["images"]
        if isinstance(images, list) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 2, 3, 4):
            raise invalid("input 'images' must be UINT8 [N,H,W,3] (1, 2 or 4 channels also accepted)")
        n, h, w, c = images.shape
        inline = n == 1 and raw_is_cheap(h, w, model)  # at most one image a request on the event loop
        pixels = [functools.partial(decode_raw, image.tobytes(), h, w, c, limits.max_pixels, limits.background) for image in images]
    else:
        blobs = tensors["image_bytes"]
        if not isinstance(blobs, list):
            raise invalid("input 'image_bytes' must be BYTES [N]")
        n = len(blobs)
        inline = n == 1 and encoded_is_cheap(blobs[0], model)  # at most one image a request on the event loop
        pixels = [functools.partial(decode_encoded, blob, limits.max_pixels, limits.background) for blob in blobs]
    if n == 0 or n > limit:
        raise invalid(f"a request carries 1 to {limit} images; this one has {n}")
    class_index = _per_image(tensors, "class_index", n, -1)
    method = _per_image(tensors, "method", n, model.methods.index(model.default_method))
    counterfactual = [bool(flag) for flag in _per_image(tensors, "counterfactual", n, 0, kinds="ib")]
    layer = _per_image(tensors, "layer", n, 0)
    method = check_targets(model, class_index, method, counterfactual, layer)
    return [(functools.partial(fit, p, model), inline) for p in pixels], class_index, method

