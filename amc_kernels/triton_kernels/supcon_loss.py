"""Triton supcon_loss (DESIGN §2.3): flash-style SupCon/SimCLR, never an A×(VN+M) matrix.

Rows: the contrast matrix Z [C, D], C = VN + M, is the views stacked view-major (row v·N + n)
and then the negatives; the anchors are its first A rows (A = VN for "all", N for "one").
Logits l_ac = ⟨z_a, z_c⟩·s_a·s_c / T with s = 1/max(‖z‖, 1e-12) (1 without normalize). The
kernels work in base 2 (logits times log2 e); a row's group is labels[row mod N], or row mod N
without labels, and c ∈ P(a) means c < VN, c ≠ a and the same group.

Forward: one program per block of anchor rows streams the C columns with an online max and
log-sum-exp (fp32, fp64 for fp64 inputs) over c ≠ a, and from the same logits the sum and the
count of the positive ones. The per-anchor statistics (lse2, Σ_{P(a)} l, |P(a)|) are saved,
and loss_a = (T/T_base)·(lse_a − Σ_{P(a)} l_ac / |P(a)|), exactly 0 when |P(a)| = 0. The
positives come from the tiles rather than from per-class sums: both terms then see the same
rounded logits (a lone positive gives exactly 0), no class sum cancels, and no class ids (a
sort) are needed.

Backward: ∂L/∂l_ac = u_a·p_ac − v_a·1[c ∈ P(a)] with u_a = w_a/T_base (0 without positives),
v_a = u_a/|P(a)|, p_ac = 2^(l_ac − lse2_a) and w the upstream weight of anchor a. The logits
and the positive relation are symmetric, so one kernel over row blocks k of Z that streams
column tiles accumulates both the anchor-row and the contrast-column terms of
∂L/∂ẑ_k = Σ_{c≠k} (u_k·p_kc + u_c·p_ck − (v_k + v_c)·1[c ∈ P(k)])·ẑ_c, with u, v = 0 past A:
no atomics and no second pass over columns (rows k ≥ A only visit the columns c < A). Then
the F.normalize backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from ._common import register_triton
from ._math import online_lse_update
from ._tiles import (
    compute_dtype,
    forbid_double_backward,
    grad_operand,
    gram_tile,
    inv_norms,
    launch,
    load_rows,
    mma,
    mma_kinds,
    normalize_backward,
    operand,
    pairwise_tiles,
)

OP = "supcon_loss"


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
    stats_ptr,
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
    # Base-2 logits l_ac = ⟨z_a, z_c⟩·r_a·s_c; stats[0, a] = log2 Σ_{c≠a, c<C} 2^l_ac,
    # stats[1, a] = Σ_{c∈P(a)} l_ac, stats[2, a] = |P(a)|.
    # Grid: (cdiv(A, BLOCK_M),): a block of anchor rows streaming BLOCK_N columns with an online
    # max and sum. Accumulation: fp32 (fp64 for fp64 inputs).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < A
    row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    group_r = row_groups(labels_ptr, rows, row_mask, N, HAS_LABELS)
    running_max = tl.full([BLOCK_M], float("-inf"), dtype=row_scale.dtype)
    running_sum = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    positive_sum = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    positive_count = tl.zeros([BLOCK_M], dtype=row_scale.dtype)
    a_tile = 0
    if SINGLE:
        a_tile = load_rows(z_ptr, rows, row_mask, 0, D, stride_n, stride_d, BLOCK_D)
    for n0 in range(0, C, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < C
        b_tile = 0
        if SINGLE:
            b_tile = load_rows(z_ptr, cols, col_mask, 0, D, stride_n, stride_d, BLOCK_D)
        logits = gram_tile(
            tl.zeros([BLOCK_M, BLOCK_N], dtype=row_scale.dtype),
            a_tile,
            b_tile,
            z_ptr,
            rows,
            row_mask,
            z_ptr,
            cols,
            col_mask,
            D,
            stride_n,
            stride_d,
            stride_n,
            stride_d,
            KIND,
            SINGLE,
            BLOCK_D,
        )
        col_scale = tl.load(col_scale_ptr + cols, mask=col_mask, other=0.0)
        logits = logits * row_scale[:, None] * col_scale[None, :]
        present = col_mask[None, :] & (rows[:, None] != cols[None, :])
        view_cols = cols < VN
        group_c = row_groups(labels_ptr, cols, view_cols, N, HAS_LABELS)
        positive = present & view_cols[None, :] & (group_r[:, None] == group_c[None, :])
        positive_sum += tl.sum(tl.where(positive, logits, 0.0), axis=1)
        positive_count += tl.sum(positive.to(row_scale.dtype), axis=1)
        logits = tl.where(present, logits, float("-inf"))
        running_max, running_sum = online_lse_update(running_max, running_sum, logits)
    tl.store(stats_ptr + rows, running_max + tl.log2(running_sum), mask=row_mask)
    tl.store(stats_ptr + A + rows, positive_sum, mask=row_mask)
    tl.store(stats_ptr + 2 * A + rows, positive_count, mask=row_mask)


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
    # out_k = ∂L/∂ẑ_k = Σ_{c≠k} G_kc·s_c·z_c with G_kc = u_k·2^(l_kc − lse2_k) + u_c·2^(l_kc −
    # lse2_c) − (v_k + v_c)·1[c ∈ P(k)]; u, v are 0 and lse2 is +inf past A, and l_kc = l_ck.
    # Grid: (cdiv(C, BLOCK_M), cdiv(D, BLOCK_D)): a block of rows of Z and one chunk of D per
    # program, streaming columns c < C (row blocks holding anchors) or c < A; logits recomputed.
    # Accumulation: fp32 (fp64 for fp64 inputs).
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    dims = d0 + tl.arange(0, BLOCK_D)
    row_mask = rows < C
    anchor_rows = rows < A
    row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    lse_r = tl.load(lse_ptr + rows, mask=anchor_rows, other=float("inf"))
    u_r = tl.load(u_ptr + rows, mask=anchor_rows, other=0.0)
    v_r = tl.load(v_ptr + rows, mask=anchor_rows, other=0.0)
    view_rows = rows < VN
    group_r = row_groups(labels_ptr, rows, view_rows, N, HAS_LABELS)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=row_scale.dtype)
    a_tile = 0
    if SINGLE:
        a_tile = load_rows(z_ptr, rows, row_mask, 0, D, stride_n, stride_d, BLOCK_D)
    end = tl.where(row0 < A, C, A)
    for n0 in range(0, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < C
        anchor_cols = cols < A
        b_tile = load_rows(z_ptr, cols, col_mask, d0, D, stride_n, stride_d, BLOCK_D)
        logits = gram_tile(
            tl.zeros([BLOCK_M, BLOCK_N], dtype=row_scale.dtype),
            a_tile,
            b_tile,
            z_ptr,
            rows,
            row_mask,
            z_ptr,
            cols,
            col_mask,
            D,
            stride_n,
            stride_d,
            stride_n,
            stride_d,
            KIND,
            SINGLE,
            BLOCK_D,
        )
        col_scale = tl.load(col_scale_ptr + cols, mask=col_mask, other=0.0)
        lse_c = tl.load(lse_ptr + cols, mask=anchor_cols, other=float("inf"))
        u_c = tl.load(u_ptr + cols, mask=anchor_cols, other=0.0)
        v_c = tl.load(v_ptr + cols, mask=anchor_cols, other=0.0)
        view_cols = cols < VN
        group_c = row_groups(labels_ptr, cols, view_cols, N, HAS_LABELS)
        present = col_mask[None, :] & (rows[:, None] != cols[None, :])
        positive = present & view_rows[:, None] & view_cols[None, :]
        positive = positive & (group_r[:, None] == group_c[None, :])
        logits = tl.where(present, logits * row_scale[:, None] * col_scale[None, :], float("-inf"))
        g = u_r[:, None] * tl.exp2(logits - lse_r[:, None])
        g += u_c[None, :] * tl.exp2(logits - lse_c[None, :])
        g -= tl.where(positive, v_r[:, None] + v_c[None, :], 0.0)
        g = g * col_scale[None, :]
        acc = mma(acc, grad_operand(g, b_tile, GRAD_KIND), operand(b_tile, GRAD_KIND), GRAD_KIND)
    out = out_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od
    tl.store(out, acc, mask=row_mask[:, None] & (dims < D)[None, :])


def _contrast_rows(
    features: torch.Tensor, negatives: torch.Tensor | None, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z [C, D] in the input dtype, view-major then negatives; its row scales s [C])."""
    feats = features if features.dim() == 3 else features[:, None]
    n, views, d = feats.shape
    z = feats.transpose(0, 1).reshape(views * n, d)
    if negatives is not None:
        z = torch.cat([z, negatives])
    if normalize:
        return z, inv_norms(z)
    return z, torch.ones(z.shape[0], dtype=compute_dtype(z.dtype), device=z.device)


def _group_args(
    features: torch.Tensor, labels: torch.Tensor | None, scale: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """(labels_ptr, N, VN) of the kernels; without labels any tensor stands in, never read."""
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    return (scale if labels is None else labels.contiguous()), n, views * n


def _reduce(per_anchor: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    if reduction == "sum" or per_anchor.numel() == 0:
        return per_anchor.sum()
    return per_anchor.mean()


def _num_anchors(features: torch.Tensor, contrast_mode: str) -> int:
    views = features.shape[1] if features.dim() == 3 else 1
    return features.shape[0] * (views if contrast_mode == "all" else 1)


@torch.library.triton_op("amc_kernels::supcon_loss_triton_fwd", mutates_args=())
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
    """(loss, stats [3, A]): stats = (lse2, Σ_{P(a)} base-2 logits, |P(a)|) per anchor."""
    z, scale = _contrast_rows(features, negatives, normalize)
    a = _num_anchors(features, contrast_mode)
    (c, d), dtype = z.shape, compute_dtype(z.dtype)
    stats = torch.zeros((3, a), dtype=dtype, device=z.device)
    if a == 0 or c <= 1:  # no anchor, or one alone with no denominator
        return _reduce(torch.zeros_like(stats[0]), reduction), stats
    labels_ptr, n, vn = _group_args(features, labels, scale)
    tiles = pairwise_tiles(z.dtype, d)
    kind, _ = mma_kinds(z.dtype)
    launch(
        supcon_fwd_kernel,
        (triton.cdiv(a, tiles.block_m),),
        z,
        scale * (math.log2(math.e) / temperature),
        scale,
        labels_ptr,
        stats,
        a,
        c,
        n,
        vn,
        d,
        z.stride(0),
        z.stride(1),
        HAS_LABELS=labels is not None,
        FP64=z.dtype == torch.float64,
        KIND=kind,
        **tiles.kwargs(d),
    )
    lse2, positive_sum, positives = stats
    mean_gap = lse2 - positive_sum / positives.clamp_min(1)
    per_anchor = (temperature / base_temperature * math.log(2.0)) * mean_gap
    per_anchor = torch.where(positives > 0, per_anchor, torch.zeros_like(per_anchor))
    return _reduce(per_anchor, reduction), stats


def _anchor_weights(grad: torch.Tensor, anchors: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return grad
    return (grad / (anchors if reduction == "mean" else 1)).expand(anchors)


@torch.library.triton_op("amc_kernels::supcon_loss_triton_bwd", mutates_args=())
def supcon_loss_bwd(
    grad: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    stats: torch.Tensor,
    temperature: float,
    base_temperature: float,
    contrast_mode: str,
    normalize: bool,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂features, ∂L/∂negatives) in the inputs' dtype; the latter empty without negatives."""
    z, scale = _contrast_rows(features, negatives, normalize)
    a = _num_anchors(features, contrast_mode)
    (c, d), dtype = z.shape, compute_dtype(z.dtype)
    grad_z = torch.zeros((c, d), dtype=dtype, device=z.device)
    if a and c > 1 and d:
        positives = stats[2]
        weights = _anchor_weights(grad.to(dtype), a, reduction)
        u = torch.where(positives > 0, weights / base_temperature, torch.zeros_like(positives))
        v = u / positives.clamp_min(1)
        labels_ptr, n, vn = _group_args(features, labels, scale)
        tiles = pairwise_tiles(z.dtype, d, backward=True)
        kind, grad_kind = mma_kinds(z.dtype)
        launch(
            supcon_bwd_kernel,
            (triton.cdiv(c, tiles.block_m), triton.cdiv(d, tiles.block_d)),
            z,
            scale * (math.log2(math.e) / temperature),
            scale,
            labels_ptr,
            stats[0],
            u,
            v,
            grad_z,
            a,
            c,
            n,
            vn,
            d,
            z.stride(0),
            z.stride(1),
            grad_z.stride(0),
            grad_z.stride(1),
            HAS_LABELS=labels is not None,
            FP64=z.dtype == torch.float64,
            KIND=kind,
            GRAD_KIND=grad_kind,
            **tiles.kwargs(d),
        )
    if normalize:
        grad_z = normalize_backward(z, grad_z)
    grad_z = grad_z.to(features.dtype)
    vn = c - (0 if negatives is None else negatives.shape[0])
    views = features.shape[1] if features.dim() == 3 else 1
    grad_features = grad_z[:vn].reshape(views, features.shape[0], d).transpose(0, 1)
    grad_features = grad_features.reshape(features.shape)
    grad_negatives = features.new_empty((0,)) if negatives is None else grad_z[vn:].clone()
    return grad_features, grad_negatives


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    features, labels, negatives, *options = inputs
    ctx.options = options
    ctx.save_for_backward(features, labels, negatives, output[1])  # stats


def _backward(ctx: Any, grad: torch.Tensor, grad_stats: torch.Tensor | None) -> tuple:
    features, labels, negatives, stats = ctx.saved_tensors
    grad_features, grad_negatives = supcon_loss_bwd(
        grad, features, labels, negatives, stats, *ctx.options
    )
    return (grad_features, None, None if negatives is None else grad_negatives) + (None,) * 5


supcon_loss_fwd.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(OP, supcon_loss_bwd)


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
    """The reference's signature on the Triton kernels (inputs validated by the caller)."""
    loss, _ = supcon_loss_fwd(
        features,
        labels,
        negatives,
        float(temperature),
        float(base_temperature),
        contrast_mode,
        normalize,
        reduction,
    )
    return loss


register_triton(OP, supcon_loss)
