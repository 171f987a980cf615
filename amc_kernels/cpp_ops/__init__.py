"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import (
    amc_loss,
    angular_distance,
    cgc_loss,
    class_activation_map,
    gradcam,
    saliency_mask,
    selfcheck,
    supcon_loss,
)

__all__ = [
    "amc_loss",
    "angular_distance",
    "cgc_loss",
    "class_activation_map",
    "gradcam",
    "saliency_mask",
    "selfcheck",
    "supcon_loss",
]
