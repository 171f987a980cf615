"""torch.ops.amc_kernels.supcon_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd
from .._spec import SUPCON_LOSS, compute_dtype


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
    dtype = compute_dtype(features.dtype)
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
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_features = features.new_empty(features.shape if output_mask[0] else (0,))
    if negatives is None or not output_mask[1]:
        return grad_features, features.new_empty((0,))
    return grad_features, negatives.new_empty(negatives.shape)


register_autograd(SUPCON_LOSS, "supcon_loss_fwd", "supcon_loss_bwd", "cpp/cuda")
supcon_loss = forward_function(SUPCON_LOSS, "supcon_loss_fwd")
