"""torch.ops.amc_kernels.gradcam_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd, register_fakes
from .._spec import GRADCAM, Arguments, compute_dtype


def _outputs(a: Arguments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps [B, H', W'] in the activations' dtype, raw [B, h, w], α [B, K] or [B, 0]; both in
    the compute dtype)."""
    activations = a["activations"]
    batch, channels, height, width = activations.shape
    out_height, out_width = a["output_size"] if a["output_size"] else (height, width)
    acc = compute_dtype(activations.dtype)
    maps = activations.new_empty((batch, out_height, out_width))
    raw = activations.new_empty((batch, height, width), dtype=acc)
    alpha = activations.new_empty((batch, channels if a["weighting"] == "mean" else 0), dtype=acc)
    return maps, raw, alpha


def _grad_shape(name: str, a: Arguments) -> tuple[int, ...]:
    """∂L/∂<name>'s shape; with "mean" weighting ∂L/∂G is one value per channel, [B, K, 1, 1]
    (expanded by the autograd formula)."""
    shape = tuple(a[name].shape)
    return (*shape[:2], 1, 1) if name == "gradients" and a["weighting"] == "mean" else shape


register_fakes(GRADCAM, "gradcam_fwd", _outputs, "gradcam_bwd", _grad_shape)
register_autograd(GRADCAM, "gradcam_fwd", "gradcam_bwd", "cpp/cuda")
gradcam = forward_function(GRADCAM, "gradcam_fwd")
