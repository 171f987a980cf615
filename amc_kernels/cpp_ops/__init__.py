"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import class_activation_map, gradcam, saliency_mask  # noqa: F401  (cpp-maps)
from . import selfcheck

__all__ = ["selfcheck"]
