"""Reference: supervised contrastive loss, SupCon/SimCLR (docs/design.md#23-supcon_loss)."""

from __future__ import annotations

import torch

from ._common import normalize_rows, reduce_loss, upcast


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    base_temperature: float,
    contrast_mode: str,
    negatives: torch.Tensor | None,
    normalize: bool,
    reduction: str,
) -> torch.Tensor:
    """SupContrast `losses.py` (HEAD) with optional extra negatives.

    features: [N, V, D] or [N, D] (V = 1). Contrast rows are view-major, row v·N + n; then the
    M rows of `negatives` [M, D], which enter only the denominators. Anchors: every view row
    ("all", A = V·N) or view 0 ("one", A = N). With l_ac = ⟨z_a, z_c⟩ / T,
        log p_ac = l_ac − log Σ_{c' ≠ a} exp(l_ac'),
        loss_a = −(T / T_base) · Σ_{c ∈ P(a)} log p_ac / max(|P(a)|, 1),
    where P(a) are the non-self view rows with the anchor's label (its own other views when
    labels is None). Returns the mean over anchors, the sum, or the [A] vector ("none").
    """
    z = upcast(features)
    if z.dim() == 2:
        z = z[:, None, :]
    n, views, _ = z.shape
    if normalize:
        z = normalize_rows(z)
    contrast = z.transpose(0, 1).reshape(views * n, z.shape[-1])  # -1 is ambiguous when n = 0
    anchors = contrast if contrast_mode == "all" else z[:, 0]
    num_anchors = anchors.shape[0]
    columns = contrast
    if negatives is not None:
        extra = upcast(negatives)
        columns = torch.cat([contrast, normalize_rows(extra) if normalize else extra])

    if columns.shape[0] <= 1 or num_anchors == 0:  # no anchor, or one alone with no denominator
        # a zero loss whose graph reaches every input: zero gradients, [M, D] for negatives too
        return reduce_loss(anchors.sum(dim=1) * 0.0 + columns.sum() * 0.0, reduction)

    logits = anchors @ columns.T / temperature
    rows = torch.arange(num_anchors, device=z.device)
    cols = torch.arange(columns.shape[0], device=z.device)
    not_self = rows[:, None] != cols[None, :]
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1)
    log_prob = logits - log_denominator[:, None]

    sample_ids = torch.arange(n, device=z.device)
    group = sample_ids if labels is None else labels.to(z.device)
    anchor_group = group.repeat(num_anchors // n)
    column_group = group.repeat(views)
    positive = anchor_group[:, None] == column_group[None, :]
    positive = torch.nn.functional.pad(positive, (0, columns.shape[0] - views * n))
    positive = positive & not_self

    count = positive.sum(dim=1).to(z.dtype)
    positive_sum = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    mean_log_prob_pos = positive_sum / torch.where(count < 1e-6, torch.ones_like(count), count)
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
    return reduce_loss(per_anchor, reduction)
