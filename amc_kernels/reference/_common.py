"""Helpers shared by the reference ops: compute dtype, normalisation, the clamped arccos."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import ARCCOS_DELTA, NORM_EPS, compute_dtype


def upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖₂, NORM_EPS) along the last axis."""
    return F.normalize(x, p=2.0, dim=-1, eps=NORM_EPS)


def clamped_arccos(cosine: torch.Tensor) -> torch.Tensor:
    """arccos(clamp(c, −1+δ, 1−δ)); the bounds round to the dtype of `cosine`.

    The gradient is torch.clamp's: zero outside the bounds, so it is finite everywhere.
    """
    return torch.arccos(cosine.clamp(-1.0 + ARCCOS_DELTA, 1.0 - ARCCOS_DELTA))


def reduce_loss(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """'mean' (0 for an empty set), 'sum' or 'none'."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if values.numel() == 0:
        return values.sum()  # an empty mean is defined as 0, with a graph
    return values.mean()
