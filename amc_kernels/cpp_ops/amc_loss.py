"""torch.ops.amc_kernels.amc_loss_{fwd,bwd}: fake kernels, autograd, cpp/cuda backends."""

from __future__ import annotations

from typing import Any

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from ._common import forbid_double_backward, register_compiled

OP = "amc_loss"


@torch.library.register_fake("amc_kernels::amc_loss_fwd")
def _(
    features: torch.Tensor, labels: torch.Tensor, margin: float, pairs: str, reduction: str
) -> torch.Tensor:
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    if reduction != "none":
        shape: tuple = ()
    elif pairs == "halves":
        shape = (features.shape[0] // 2,)
    else:
        shape = (features.shape[0],)
    return features.new_empty(shape, dtype=dtype)


@torch.library.register_fake("amc_kernels::amc_loss_bwd")
def _(
    grad: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    pairs: str,
    reduction: str,
    clamp_grad_at_bounds: bool,
) -> torch.Tensor:
    return features.new_empty(features.shape)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    features, labels, ctx.margin, ctx.pairs, ctx.reduction = inputs
    ctx.save_for_backward(features, labels)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    features, labels = ctx.saved_tensors
    grad_features = torch.ops.amc_kernels.amc_loss_bwd(
        grad, features, labels, ctx.margin, ctx.pairs, ctx.reduction, CLAMP_GRAD_AT_BOUNDS
    )
    return grad_features, None, None, None, None


torch.library.register_autograd(
    "amc_kernels::amc_loss_fwd", _backward, setup_context=_setup_context
)
forbid_double_backward(OP)


def amc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.5,
    pairs: str = "all",
    reduction: str = "mean",
) -> torch.Tensor:
    """The reference's signature on the compiled kernels (inputs validated by the caller)."""
    return torch.ops.amc_kernels.amc_loss_fwd(features, labels, float(margin), pairs, reduction)


register_compiled(OP, amc_loss)
