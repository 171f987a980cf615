"""torch.ops.amc_kernels.supcon_loss_{fwd,bwd}: fake kernels, autograd, cpp/cuda backends."""

from __future__ import annotations

from typing import Any

import torch

from ._common import forbid_double_backward, register_compiled

OP = "supcon_loss"


def _loss_dtype(features: torch.Tensor) -> torch.dtype:
    return torch.float64 if features.dtype == torch.float64 else torch.float32


@torch.library.register_fake("amc_kernels::supcon_loss_fwd")
def _(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    temperature: float,
    base_temperature: float,
    contrast_mode: str,
    normalize: bool,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    samples, views = features.shape[0], features.shape[1]
    anchors = samples * views if contrast_mode == "all" else samples
    dtype = _loss_dtype(features)
    loss_shape = (anchors,) if reduction == "none" else ()
    return features.new_empty(loss_shape, dtype=dtype), features.new_empty((anchors,), dtype=dtype)


@torch.library.register_fake("amc_kernels::supcon_loss_bwd")
def _(
    grad: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    lse: torch.Tensor,
    temperature: float,
    base_temperature: float,
    contrast_mode: str,
    normalize: bool,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_negatives = (
        features.new_empty((0,)) if negatives is None else negatives.new_empty(negatives.shape)
    )
    return features.new_empty(features.shape), grad_negatives


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    features, labels, negatives, *options = inputs
    ctx.options = options  # temperature, base_temperature, contrast_mode, normalize, reduction
    lse = output[1]
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(features, labels, negatives, lse)


def _backward(ctx: Any, grad: torch.Tensor, _grad_lse: torch.Tensor | None) -> tuple:
    features, labels, negatives, lse = ctx.saved_tensors
    grad_features, grad_negatives = torch.ops.amc_kernels.supcon_loss_bwd(
        grad, features, labels, negatives, lse, *ctx.options
    )
    return (grad_features, None, None if negatives is None else grad_negatives, *[None] * 5)


torch.library.register_autograd(
    "amc_kernels::supcon_loss_fwd", _backward, setup_context=_setup_context
)
forbid_double_backward(OP)


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    negatives: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """The reference's signature on the compiled kernels (inputs validated by the caller)."""
    if features.dim() == 2:
        features = features.unsqueeze(1)  # [N, D] is one view
    loss, _ = torch.ops.amc_kernels.supcon_loss_fwd(
        features,
        labels,
        negatives,
        float(temperature),
        float(base_temperature),
        contrast_mode,
        bool(normalize),
        reduction,
    )
    return loss


register_compiled(OP, supcon_loss)
