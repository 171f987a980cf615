"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import class_activation_map, gradcam, saliency_mask, selfcheck

__all__ = ["class_activation_map", "gradcam", "saliency_mask", "selfcheck"]
