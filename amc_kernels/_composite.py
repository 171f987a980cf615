"""Options that the public functions implement around an op, identically for every backend
(docs/design.md#23-supcon_loss): a tensor (learnable) temperature, supcon_loss's ``ignore_index``
and ``no_positive="drop"``. Each is an exact rewrite of the call into one that the backends
already compute, so every backend (cuda included) gets it with no kernel of its own.

A lowering takes the validated arguments (the spec's options and its ``frontend`` options) and
``call``, which runs the op's backend on arguments without frontend options; it returns the
user's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ._spec import NORM_EPS, Arguments, compute_dtype

Call = Callable[[Arguments], Any]


def supcon_loss(a: Arguments, call: Call) -> torch.Tensor:
    """supcon_loss with ``ignore_index``, ``no_positive`` and a tensor temperature.

    - ignore_index = k: the samples labelled k (every view) are removed before the op: they are
      neither anchors, positives nor negatives, and get a zero gradient. "mean" averages over
      the remaining anchors; "none" gives 0 at the ignored anchors (as CrossEntropyLoss).
    - no_positive = "drop": the mean is Σ_a loss_a / K, K = the anchors with a positive (0 when
      K = 0). Anchors without positives have loss 0, so this is the op's "sum" over K. With V ≥ 2
      views every anchor has one (K = A); with V = 1, K counts the samples whose label occurs
      at least twice (none without labels).
    - temperature τ a tensor: l_ac = ⟨z_a, z_c⟩/τ = ⟨z_a/√τ, z_c/√τ⟩, so the op runs at
      temperature 1 on the (normalised) rows scaled by τ^(−1/2), and the factor τ/T_base
      multiplies its result; autograd then gives ∂L/∂τ exactly from the op's own row gradients
      (O(N·V·D) extra memory, no host synchronisation).
    """
    no_positive, ignore_index = a.pop("no_positive"), a.pop("ignore_index")
    features, labels, reduction = a["features"], a["labels"], a["reduction"]
    samples, views = features.shape[0], features.shape[1]
    anchor_views = views if a["contrast_mode"] == "all" else 1
    kept = None
    if ignore_index is not None:
        kept = (labels != ignore_index).nonzero().squeeze(1)  # one synchronisation
        features, labels = features.index_select(0, kept), labels.index_select(0, kept)
        a.update(features=features, labels=labels)
    drop = no_positive == "drop" and reduction == "mean"
    if drop:
        a["reduction"] = "sum"
    factor = _tensor_temperature(a)
    loss = call(a)
    if factor is not None:
        loss = loss * factor
    if drop:
        loss = loss / _anchors_with_positives(labels, features.shape[0] * anchor_views, views, loss)
    if kept is not None and reduction == "none":  # the kept rows v·N' + n' go to v·N + kept[n']
        out = loss.new_zeros((anchor_views, samples))
        loss = out.index_copy(1, kept, loss.view(anchor_views, kept.numel())).flatten()
    return loss


def _tensor_temperature(a: Arguments) -> torch.Tensor | None:
    """With a tensor τ: rewrite `a` to the op at τ = T_base = 1 on rows scaled by τ^(−1/2), and
    return the factor τ/T_base; None for a number."""
    tau = a["temperature"]
    if not isinstance(tau, torch.Tensor):
        return None
    dtype = compute_dtype(a["features"].dtype)
    scale = tau.to(dtype).rsqrt()

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        x = x.to(dtype)
        return (F.normalize(x, dim=-1, eps=NORM_EPS) if a["normalize"] else x) * scale

    factor = tau.to(dtype) / a["base_temperature"]
    a.update(
        features=rows(a["features"]),
        negatives=rows(a["negatives"]),
        temperature=1.0,
        base_temperature=1.0,
        normalize=False,
    )
    return factor


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    """count_n = #{m : labels[m] = labels[n]}, [N], by a sort and two binary searches (no host
    synchronisation)."""
    values = labels.long()
    ordered = values.sort().values
    return torch.searchsorted(ordered, values, right=True) - torch.searchsorted(ordered, values)


def _anchors_with_positives(
    labels: torch.Tensor | None, anchors: int, views: int, like: torch.Tensor
) -> torch.Tensor:
    """max(K, 1), K = #anchors a with |P(a)| = V·count(label_a) − 1 ≥ 1 (V − 1 without labels):
    all A anchors for V ≥ 2; for V = 1 the samples whose label occurs twice or more."""
    if views >= 2 or labels is None:
        return like.new_tensor(max(anchors if views >= 2 else 0, 1))
    return (label_counts(labels) >= 2).sum().clamp_min(1).to(like.dtype)


LOWERINGS: dict[str, Callable[[Arguments, Call], Any]] = {"supcon_loss": supcon_loss}
