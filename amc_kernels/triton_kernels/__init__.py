"""Triton kernels, one module per op, registered as the `triton` backend when triton imports."""

from . import (
    amc_loss,
    angular_distance,
    cgc_loss,
    class_activation_map,
    gradcam,
    saliency_mask,
    supcon_loss,
)

__all__ = [
    "amc_loss",
    "angular_distance",
    "cgc_loss",
    "class_activation_map",
    "gradcam",
    "saliency_mask",
    "supcon_loss",
]
