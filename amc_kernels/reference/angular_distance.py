"""Reference: pairwise angular distance (docs/design.md#21-angular_distance)."""

from __future__ import annotations

import torch

from ._common import clamped_arccos, normalize_rows, upcast


def angular_distance(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """θ_ij = arccos(clamp(⟨x̂_i, ŷ_j⟩, −1+δ, 1−δ)), x̂ = x / max(‖x‖, 1e-12), δ = 1e-7.

    x: [N, D], y: [M, D] (None means y = x). Returns [N, M] radians in x's dtype; the
    arithmetic runs in fp32 (fp64 for fp64 inputs).
    """
    x_hat = normalize_rows(upcast(x))
    y_hat = x_hat if y is None else normalize_rows(upcast(y))
    return clamped_arccos(x_hat @ y_hat.T).to(x.dtype)
