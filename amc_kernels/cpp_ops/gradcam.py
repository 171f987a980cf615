"""torch.ops.amc_kernels.gradcam_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd
from .._spec import GRADCAM, compute_dtype


@torch.library.register_fake("amc_kernels::gradcam_fwd")
def _(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, height, width = activations.shape
    out_height, out_width = output_size if output_size else (height, width)
    acc = compute_dtype(activations.dtype)
    maps = activations.new_empty((batch, out_height, out_width))
    raw = activations.new_empty((batch, height, width), dtype=acc)
    alpha = activations.new_empty((batch, channels if weighting == "mean" else 0), dtype=acc)
    return maps, raw, alpha


@torch.library.register_fake("amc_kernels::gradcam_bwd")
def _(
    grad: torch.Tensor,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    raw: torch.Tensor,
    alpha: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    # "mean": ∂L/∂G is one value per channel, [B, K, 1, 1], expanded by the autograd formula.
    per_channel = (*gradients.shape[:2], 1, 1)
    grad_shape = per_channel if weighting == "mean" else gradients.shape
    return (
        activations.new_empty(activations.shape if output_mask[0] else (0,)),
        gradients.new_empty(grad_shape if output_mask[1] else (0,)),
    )


register_autograd(GRADCAM, "gradcam_fwd", "gradcam_bwd", "cpp/cuda")
gradcam = forward_function(GRADCAM, "gradcam_fwd")
