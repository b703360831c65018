from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeatmapType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_FLOAT32: _ClassVar[HeatmapType]
    HEATMAP_UINT8: _ClassVar[HeatmapType]
    HEATMAP_NONE: _ClassVar[HeatmapType]

class ResizeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_STRETCH: _ClassVar[ResizeMode]
    RESIZE_CENTER_CROP: _ClassVar[ResizeMode]
    RESIZE_LETTERBOX: _ClassVar[ResizeMode]
HEATMAP_FLOAT32: HeatmapType
HEATMAP_UINT8: HeatmapType
HEATMAP_NONE: HeatmapType
RESIZE_STRETCH: ResizeMode
RESIZE_CENTER_CROP: ResizeMode
RESIZE_LETTERBOX: ResizeMode

class RawImage(_message.Message):
    __slots__ = ("pixels", "height", "width", "channels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    height: int
    width: int
    channels: int
    def __init__(self, pixels: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("id", "model", "version", "image", "class_index", "method", "top_k", "heatmap_type", "heatmap_original_size", "resize", "return_scores", "timeout_ms", "background", "counterfactual", "top_k_maps", "layer")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_ORIGINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    RETURN_SCORES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    COUNTERFACTUAL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_MAPS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: int
    image: Image
    class_index: int
    method: str
    top_k: int
    heatmap_type: HeatmapType
    heatmap_original_size: bool
    resize: ResizeMode
    return_scores: bool
    timeout_ms: int
    background: int
    counterfactual: bool
    top_k_maps: int
    layer: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., class_index: _Optional[int] = ..., method: _Optional[str] = ..., top_k: _Optional[int] = ..., heatmap_type: _Optional[_Union[HeatmapType, str]] = ..., heatmap_original_size: bool = ..., resize: _Optional[_Union[ResizeMode, str]] = ..., return_scores: bool = ..., timeout_ms: _Optional[int] = ..., background: _Optional[int] = ..., counterfactual: bool = ..., top_k_maps: _Optional[int] = ..., layer: _Optional[str] = ...) -> None: ...

class Class(_message.Message):
    __slots__ = ("index", "label", "probability", "logit")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    logit: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ..., logit: _Optional[float] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("height", "width", "type", "data", "scale", "region")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    type: HeatmapType
    data: bytes
    scale: float
    region: Region
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., type: _Optional[_Union[HeatmapType, str]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., region: _Optional[_Union[Region, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "compute_ms", "batch_size", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    compute_ms: float
    batch_size: int
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("id", "model", "version", "explained", "top_k", "logits", "probabilities", "heatmap", "method", "timing", "error", "image_height", "image_width", "maps")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: int
    explained: Class
    top_k: _containers.RepeatedCompositeFieldContainer[Class]
    logits: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    heatmap: Heatmap
    method: str
    timing: Timing
    error: Error
    image_height: int
    image_width: int
    maps: _containers.RepeatedCompositeFieldContainer[ClassMap]
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., explained: _Optional[_Union[Class, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[Class, _Mapping]]] = ..., logits: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., method: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., maps: _Optional[_Iterable[_Union[ClassMap, _Mapping]]] = ...) -> None: ...

class ClassMap(_message.Message):
    __slots__ = ("explained", "heatmap")
    EXPLAINED_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    explained: Class
    heatmap: Heatmap
    def __init__(self, explained: _Optional[_Union[Class, _Mapping]] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ...) -> None: ...

class ExplainManyRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ExplainRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ExplainRequest, _Mapping]]] = ...) -> None: ...

class ExplainManyResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ExplainResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ExplainResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "input_height", "input_width", "preprocess", "target_layer", "feature_height", "feature_width", "methods", "classes", "num_classes", "device", "batch_sizes", "state", "tensorflow", "keras", "head", "state_reason", "layers", "fusions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TENSORFLOW_FIELD_NUMBER: _ClassVar[int]
    KERAS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FUSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    input_height: int
    input_width: int
    preprocess: str
    target_layer: str
    feature_height: int
    feature_width: int
    methods: _containers.RepeatedScalarFieldContainer[str]
    classes: _containers.RepeatedScalarFieldContainer[str]
    num_classes: int
    device: str
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    state: str
    tensorflow: str
    keras: str
    head: str
    state_reason: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    fusions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., preprocess: _Optional[str] = ..., target_layer: _Optional[str] = ..., feature_height: _Optional[int] = ..., feature_width: _Optional[int] = ..., methods: _Optional[_Iterable[str]] = ..., classes: _Optional[_Iterable[str]] = ..., num_classes: _Optional[int] = ..., device: _Optional[str] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., state: _Optional[str] = ..., tensorflow: _Optional[str] = ..., keras: _Optional[str] = ..., head: _Optional[str] = ..., state_reason: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., fusions: _Optional[_Iterable[str]] = ...) -> None: ...
