"""Triton supcon_loss (docs/design.md#23-supcon_loss): flash-style SupCon/SimCLR, never an A×(VN+M)
matrix.

Rows: the contrast matrix Z [C, D], C = VN + M, is the views stacked view-major (row v·N + n)
and then the negatives; the anchors are its first A rows (A = VN for "all", N for "one").
Logits l_ac = ⟨z_a, z_c⟩·s_a·s_c / T with s = 1/max(‖z‖, NORM_EPS) (1 without normalize). The
kernels work in base 2 (logits times log2 e); a row's group is labels[row mod N], or row mod N
without labels, and c ∈ P(a) means c < VN, c ≠ a and the same group.

Forward: one program per block of anchor rows streams the C columns with an online max and
log-sum-exp (fp32, fp64 for fp64 inputs) over c ≠ a, and from the same logits the sum and the
count of the positive ones. It saves lse_a (natural log, [A], −inf for an anchor alone) and
gives loss_a = (T/T_base)·(lse_a − Σ_{P(a)} l_ac / |P(a)|), exactly 0 when |P(a)| = 0. The
positives come from the tiles rather than from per-class sums: both terms then see the same
rounded logits (a lone positive gives exactly 0), no class sum cancels, and no class ids (a
sort) are needed.

Backward: ∂L/∂l_ac = u_a·p_ac − v_a·1[c ∈ P(a)] with u_a = w_a/T_base (0 without positives),
v_a = u_a/|P(a)|, p_ac = 2^(l_ac − lse_a·log2 e) and w the upstream weight of anchor a;
|P(a)| = V·count(labels[a mod N]) − 1 (V − 1 without labels), the counts from a sort and two
binary searches (O(N log N), no host synchronisation). The logits and the positive relation
are symmetric, so one kernel over row blocks k of Z that streams column tiles accumulates both
the anchor-row and the contrast-column terms of
∂L/∂ẑ_k = Σ_{c≠k} (u_k·p_kc + u_c·p_ck − (v_k + v_c)·1[c ∈ P(k)])·ẑ_c, with u, v = 0 past A:
no atomics and no second pass over columns (rows k ≥ A only visit the columns c < A). Its
row blocks cover only the rows whose gradient output_mask requests (the features' VN rows,
the negatives' M rows, or both). Then the F.normalize backward.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd
from .._spec import SUPCON_LOSS, compute_dtype, label_counts
from ._common import launch, mean_weights, not_computed, reduce, triton_op
from ._math import online_lse_update
from ._tiles import (
    grad_operand,
    inv_norms,
    mma,
    mma_kinds,
    normalize_backward,
    operand,
    pair_tile,
    pairwise_tiles,
    row_block,
    row_tile,
    store_rows,
)

LN2 = tl.constexpr(math.log(2.0))
LOG2E = tl.constexpr(math.log2(math.e))


@triton.jit
def row_groups(labels_ptr, rows, mask, N, HAS_LABELS: tl.constexpr):
    """The group of contrast rows (row v·N + n): labels[n], or n without labels."""
    samples = rows % N
    if HAS_LABELS:
        return tl.load(labels_ptr + samples, mask=mask, other=0).to(tl.int64)
    else:
        return samples


@triton.jit
def supcon_fwd_kernel(
    z_ptr,
    row_scale_ptr,
    col_scale_ptr,
    labels_ptr,
    lse_ptr,
    gap_ptr,
    A,
    C,
    N,
    VN,
    D,
    stride_n,
    stride_d,
    HAS_LABELS: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Base-2 logits l_ac = ⟨z_a, z_c⟩·r_a·s_c; lse[a] = ln 2·log2 Σ_{c≠a, c<C} 2^l_ac (natural)
    # and gap[a] = lse[a] − ln 2·Σ_{c∈P(a)} l_ac / |P(a)|, 0 when |P(a)| = 0.
    # Grid: (cdiv(A, BLOCK_M),): a block of anchor rows streaming BLOCK_N columns with an online
    # max and sum. Accumulation: fp32 (fp64 for fp64 inputs).
    rows, row_mask = row_block(A, BLOCK_M)
    row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    group_r = row_groups(labels_ptr, rows, row_mask, N, HAS_LABELS)
    running_max = tl.full([BLOCK_M], float("-inf"), dtype=row_scale.dtype)
    running_sum = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    positive_sum = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    positive_count = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    a_tile = row_tile(z_ptr, rows, row_mask, D, stride_n, stride_d, SINGLE, BLOCK_D)
    for n0 in range(0, C, BLOCK_N):
        cols, col_mask, _, _, _, logits = pair_tile(
            a_tile, z_ptr, rows, row_mask, row_scale, z_ptr, col_scale_ptr, n0, C, 0, D,
            stride_n, stride_d, stride_n, stride_d,
            KIND, SINGLE, SINGLE, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        present = col_mask[None, :] & (rows[:, None] != cols[None, :])
        view_cols = cols < VN
        group_c = row_groups(labels_ptr, cols, view_cols, N, HAS_LABELS)
        positive = present & view_cols[None, :] & (group_r[:, None] == group_c[None, :])
        positive_sum += tl.sum(tl.where(positive, logits, 0.0), axis=1)
        positive_count += tl.sum(positive.to(row_scale.dtype), axis=1)
        logits = tl.where(present, logits, float("-inf"))
        running_max, running_sum = online_lse_update(running_max, running_sum, logits)
    lse = (running_max + tl.log2(running_sum)) * LN2
    mean_positive = positive_sum / tl.maximum(positive_count, 1.0) * LN2
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(gap_ptr + rows, tl.where(positive_count > 0, lse - mean_positive, 0.0), mask=row_mask)


@triton.jit
def supcon_bwd_kernel(
    z_ptr,
    row_scale_ptr,
    col_scale_ptr,
    labels_ptr,
    lse_ptr,
    u_ptr,
    v_ptr,
    out_ptr,
    A,
    C,
    N,
    VN,
    D,
    ROW_START,
    ROW_END,
    stride_n,
    stride_d,
    stride_on,
    stride_od,
    HAS_LABELS: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    GRAD_KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_{k − ROW_START} = ∂L/∂ẑ_k = Σ_{c≠k} G_kc·s_c·z_c for ROW_START ≤ k < ROW_END, with
    # G_kc = u_k·2^(l_kc − lse2_k) + u_c·2^(l_kc − lse2_c) − (v_k + v_c)·1[c ∈ P(k)],
    # lse2 = lse·log2 e (+inf where u = 0 and past A), u, v = 0 past A, and l_kc = l_ck.
    # Grid: (cdiv(ROW_END − ROW_START, BLOCK_M), cdiv(D, BLOCK_D)): a block of rows of Z and one
    # chunk of D per program, streaming columns c < C (row blocks holding anchors) or c < A;
    # logits recomputed. Accumulation: fp32 (fp64 for fp64 inputs).
    row0 = ROW_START + tl.program_id(0).to(tl.int64) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    row_mask = rows < ROW_END
    anchor_rows = rows < A
    row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    lse_r = tl.load(lse_ptr + rows, mask=anchor_rows, other=float("inf")) * LOG2E
    u_r = tl.load(u_ptr + rows, mask=anchor_rows, other=0.0)
    v_r = tl.load(v_ptr + rows, mask=anchor_rows, other=0.0)
    view_rows = rows < VN
    group_r = row_groups(labels_ptr, rows, view_rows, N, HAS_LABELS)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=row_scale.dtype)
    a_tile = row_tile(z_ptr, rows, row_mask, D, stride_n, stride_d, SINGLE, BLOCK_D)
    end = tl.where(row0 < A, C, A)
    for n0 in range(0, end, BLOCK_N):
        cols, col_mask, b_tile, _, col_scale, logits = pair_tile(
            a_tile, z_ptr, rows, row_mask, row_scale, z_ptr, col_scale_ptr, n0, C, d0, D,
            stride_n, stride_d, stride_n, stride_d,
            KIND, SINGLE, True, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        anchor_cols = cols < A
        lse_c = tl.load(lse_ptr + cols, mask=anchor_cols, other=float("inf")) * LOG2E
        u_c = tl.load(u_ptr + cols, mask=anchor_cols, other=0.0)
        v_c = tl.load(v_ptr + cols, mask=anchor_cols, other=0.0)
        view_cols = cols < VN
        group_c = row_groups(labels_ptr, cols, view_cols, N, HAS_LABELS)
        present = col_mask[None, :] & (rows[:, None] != cols[None, :])
        positive = present & view_rows[:, None] & view_cols[None, :]
        positive = positive & (group_r[:, None] == group_c[None, :])
        logits = tl.where(present, logits, float("-inf"))
        g = u_r[:, None] * tl.exp2(logits - lse_r[:, None])
        g += u_c[None, :] * tl.exp2(logits - lse_c[None, :])
        g -= tl.where(positive, v_r[:, None] + v_c[None, :], 0.0)
        g = g * col_scale[None, :]
        acc = mma(acc, grad_operand(g, b_tile, GRAD_KIND), operand(b_tile, GRAD_KIND), GRAD_KIND)
    store_rows(out_ptr, acc, rows - ROW_START, row_mask, d0, D, stride_on, stride_od, BLOCK_D)


def _contrast_rows(
    features: torch.Tensor, negatives: torch.Tensor | None, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z [C, D] in the input dtype, view-major then negatives; its row scales s [C])."""
    n, views, d = features.shape
    z = features.transpose(0, 1).reshape(views * n, d)
    if negatives is not None:
        z = torch.cat([z, negatives])
    if normalize:
        return z, inv_norms(z)
    return z, torch.ones(z.shape[0], dtype=compute_dtype(z.dtype), device=z.device)


def _group_args(
    features: torch.Tensor, labels: torch.Tensor | None, scale: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """(labels_ptr, N, VN) of the kernels; without labels any tensor stands in, never read."""
    n, views, _ = features.shape
    return (scale if labels is None else labels.contiguous()), n, views * n


def _num_anchors(features: torch.Tensor, contrast_mode: str) -> int:
    return features.shape[0] * (features.shape[1] if contrast_mode == "all" else 1)


def _logit_scales(scale: torch.Tensor, temperature: float) -> torch.Tensor:
    """The anchors' row scales of the base-2 logits: s·log2(e)/T."""
    return scale * (math.log2(math.e) / temperature)


@triton_op("supcon_loss_triton_fwd")
def supcon_loss_fwd(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    temperature: float,
    base_temperature: float,
    contrast_mode: str,
    normalize: bool,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse [A]): lse_a = log Σ_{c≠a} exp(l_ac) in the natural log, −inf for a lone row."""
    z, scale = _contrast_rows(features, negatives, normalize)
    a = _num_anchors(features, contrast_mode)
    (c, d), dtype = z.shape, compute_dtype(z.dtype)
    lse = torch.full((a,), float("-inf"), dtype=dtype, device=z.device)
    if a == 0 or c <= 1:  # no anchor, or one alone with no denominator
        return reduce(torch.zeros_like(lse), reduction, a), lse
    gap = torch.empty_like(lse)
    labels_ptr, n, vn = _group_args(features, labels, scale)
    tiles = pairwise_tiles(z.dtype, d, False)
    kind, _ = mma_kinds(z.dtype)
    launch(
        supcon_fwd_kernel, (triton.cdiv(a, tiles.block_m),),
        z, _logit_scales(scale, temperature), scale, labels_ptr, lse, gap, a, c, n, vn, d,
        *z.stride(),
        HAS_LABELS=labels is not None, FP64=z.dtype == torch.float64, KIND=kind,
        **tiles.kwargs(d),
    )  # fmt: skip
    return reduce(gap * (temperature / base_temperature), reduction, a), lse


def _positive_counts(
    features: torch.Tensor, labels: torch.Tensor | None, anchors: int, dtype: torch.dtype
) -> torch.Tensor:
    """|P(a)| [A]: V·count(labels[a mod N]) − 1, or V − 1 without labels (no host sync)."""
    n, views, _ = features.shape
    if labels is None:
        return torch.full((anchors,), views - 1, dtype=dtype, device=features.device)
    return (views * label_counts(labels) - 1).to(dtype).repeat(anchors // n)


@triton_op("supcon_loss_triton_bwd")
def supcon_loss_bwd(
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
    """(∂L/∂features, ∂L/∂negatives) in the inputs' dtype; each empty when output_mask does not
    request it (∂L/∂negatives: or without negatives)."""
    want_features, want_negatives = output_mask[0], output_mask[1] and negatives is not None
    z, scale = _contrast_rows(features, negatives, normalize)
    a = _num_anchors(features, contrast_mode)
    (c, d), dtype = z.shape, compute_dtype(z.dtype)
    n, views, _ = features.shape
    vn = n * views
    start, end = (0 if want_features else vn), (c if want_negatives else vn)
    grad_z = torch.zeros((end - start, d), dtype=dtype, device=z.device)
    if a and c > 1 and d and end > start:
        positives = _positive_counts(features, labels, a, dtype)
        weights = mean_weights(grad.to(dtype), a, reduction)
        u = torch.where(positives > 0, weights / base_temperature, torch.zeros_like(positives))
        v = u / positives.clamp_min(1)
        shift = torch.where(u != 0, lse, torch.full_like(lse, float("inf")))
        labels_ptr, n, vn = _group_args(features, labels, scale)
        tiles = pairwise_tiles(z.dtype, d, True)
        kind, grad_kind = mma_kinds(z.dtype)
        launch(
            supcon_bwd_kernel,
            (triton.cdiv(end - start, tiles.block_m), triton.cdiv(d, tiles.block_d)),
            z, _logit_scales(scale, temperature), scale, labels_ptr, shift, u, v, grad_z,
            a, c, n, vn, d, start, end, *z.stride(), *grad_z.stride(),
            HAS_LABELS=labels is not None, FP64=z.dtype == torch.float64, KIND=kind,
            GRAD_KIND=grad_kind, **tiles.kwargs(d),
        )  # fmt: skip
    if normalize:
        grad_z = normalize_backward(z[start:end], grad_z, CLAMP_GRAD_AT_BOUNDS)
    grad_z = grad_z.to(features.dtype)
    grad_features = not_computed(features)
    if want_features:
        grad_features = grad_z[:vn].reshape(views, n, d).transpose(0, 1).reshape(features.shape)
    grad_negatives = not_computed(features)
    if want_negatives:
        grad_negatives = grad_z[vn - start :]
        grad_negatives = grad_negatives.clone() if want_features else grad_negatives
    return grad_features, grad_negatives


register_autograd(SUPCON_LOSS, "supcon_loss_triton_fwd", "supcon_loss_triton_bwd", "triton")
supcon_loss = forward_function(SUPCON_LOSS, "supcon_loss_triton_fwd")
