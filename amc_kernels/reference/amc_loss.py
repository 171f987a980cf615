"""Reference: the Angular Margin Contrastive loss (docs/design.md#22-amc_loss)."""

from __future__ import annotations

import torch

from ._common import clamped_arccos, normalize_rows, reduce_loss, upcast


def pair_loss(theta: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """ℓ = S·θ² + (1 − S)·max(0, m − θ)²."""
    return torch.where(same, theta.square(), (margin - theta).clamp_min(0.0).square())


def amc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    pairs: str,
    reduction: str,
) -> torch.Tensor:
    """AMC loss over the pairs of a batch.

    features: [N, D], un-normalised. labels: [N] integers; S_ij = 1[y_i == y_j].
    θ_ij = arccos(clamp(⟨ẑ_i, ẑ_j⟩, −1+1e-7, 1−1e-7)), ℓ_ij = S·θ² + (1−S)·max(0, m−θ)².
    pairs="halves": pairs (k, k+⌊N/2⌋), k < ⌊N/2⌋; "none" gives the [⌊N/2⌋] pair vector.
    pairs="all": every i < j; "none" gives r_i = Σ_{j≠i} ℓ_ij / (N−1), [N].
    "mean" is over pairs (0 when there is none). fp32 result for fp16/bf16 inputs.
    """
    z = normalize_rows(upcast(features))
    if pairs == "halves":
        half = z.shape[0] // 2
        cosine = (z[:half] * z[half : 2 * half]).sum(dim=-1)
        same = labels[:half] == labels[half : 2 * half]
        return reduce_loss(pair_loss(clamped_arccos(cosine), same, margin), reduction)

    n = z.shape[0]
    losses = pair_loss(clamped_arccos(z @ z.T), labels[:, None] == labels[None, :], margin)
    rows = torch.arange(n, device=z.device)
    upper = rows[:, None] < rows[None, :]  # each unordered pair i < j once
    pair_sum = torch.where(upper, losses, torch.zeros_like(losses)).sum()
    if reduction == "none":
        off_diagonal = torch.where(upper | upper.T, losses, torch.zeros_like(losses))
        return off_diagonal.sum(dim=1) / max(n - 1, 1)
    if reduction == "sum":
        return pair_sum
    return pair_sum / max(n * (n - 1) // 2, 1)  # 0 when there is no pair
