"""CAM methods; a method's code on the wire is its index in METHODS (new ones
are appended, so codes never change)."""

from .base import AttentionMethod, CamMethod
from .eigencam import EigenCam, EigenGradCam
from .generic_attention import GenericAttention
from .gradcam import GradCam
from .gradcam_elementwise import GradCamElementWise
from .gradcam_plus_plus import GradCamPlusPlus
from .guided import GuidedGradients
from .hirescam import HiResCam
from .layercam import LayerCam
from .rollout import AttentionRollout
from .xgradcam import XGradCam

METHODS = (
    GradCam(),
    GradCamPlusPlus(),
    GuidedGradients(),
    HiResCam(),
    GradCamElementWise(),
    XGradCam(),
    LayerCam(),
    EigenCam(),
    EigenGradCam(),
    AttentionRollout(),
    GenericAttention(),
)
NAMES = tuple(m.name for m in METHODS)
# The methods every export offers; the attention methods only where the model has self-attention.
CAM_NAMES = tuple(m.name for m in METHODS if isinstance(m, CamMethod))
ATTENTION = tuple(code for code, m in enumerate(METHODS) if isinstance(m, AttentionMethod))
