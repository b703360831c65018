"""CAM methods; a method's code on the wire is its index in METHODS."""

from .gradcam import GradCam
from .gradcam_plus_plus import GradCamPlusPlus
from .guided import GuidedGradients

METHODS = (GradCam(), GradCamPlusPlus(), GuidedGradients())
NAMES = tuple(m.name for m in METHODS)
