"""The pure-PyTorch reference of every op: the executable spec and the test oracle
(docs/design.md#3-backends-and-dispatch).

Each function follows its DESIGN formula literally, runs on every device and dtype (arithmetic
in fp32, fp64 for fp64 inputs) and is differentiable by autograd where the op has a gradient.
The reference does not validate its inputs: `amc_kernels.functional` does.
"""

from .amc_loss import amc_loss
from .angular_distance import angular_distance
from .cgc_loss import cgc_loss
from .class_activation_map import class_activation_map
from .gradcam import gradcam
from .saliency_mask import saliency_mask
from .supcon_loss import supcon_loss

__all__ = [
    "amc_loss",
    "angular_distance",
    "cgc_loss",
    "class_activation_map",
    "gradcam",
    "saliency_mask",
    "supcon_loss",
]
