"""torch.ops.amc_kernels.amc_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd
from .._spec import AMC_LOSS, compute_dtype


@torch.library.register_fake("amc_kernels::amc_loss_fwd")
def _(
    features: torch.Tensor, labels: torch.Tensor, margin: float, pairs: str, reduction: str
) -> torch.Tensor:
    if reduction != "none":
        shape: tuple = ()
    elif pairs == "halves":
        shape = (features.shape[0] // 2,)
    else:
        shape = (features.shape[0],)
    return features.new_empty(shape, dtype=compute_dtype(features.dtype))


@torch.library.register_fake("amc_kernels::amc_loss_bwd")
def _(
    grad: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    pairs: str,
    reduction: str,
    clamp_grad_at_bounds: bool,
    output_mask: list[bool],
) -> torch.Tensor:
    return features.new_empty(features.shape if output_mask[0] else (0,))


register_autograd(
    AMC_LOSS, "amc_loss_fwd", "amc_loss_bwd", "cpp/cuda", extras=(CLAMP_GRAD_AT_BOUNDS,)
)
amc_loss = forward_function(AMC_LOSS, "amc_loss_fwd")
