"""CAM methods; a method's code on the wire is its index in METHODS (new ones
are appended, so codes never change)."""

from .eigencam import EigenCam, EigenGradCam
from .gradcam import GradCam
from .gradcam_elementwise import GradCamElementWise
from .gradcam_plus_plus import GradCamPlusPlus
from .guided import GuidedGradients
from .hirescam import HiResCam
from .layercam import LayerCam
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
)
NAMES = tuple(m.name for m in METHODS)
