"""Helpers shared by the reference ops: compute dtype, normalisation, the clamped arccos."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The official AMC clip: cosines are clamped to [−1 + δ, 1 − δ] in the compute dtype.
ARCCOS_DELTA = 1e-7
#: Norms below this are replaced by it: x̂ = x / max(‖x‖, ε), as F.normalize and tf.l2_normalize.
NORM_EPS = 1e-12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖₂, 1e-12) along the last axis."""
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
