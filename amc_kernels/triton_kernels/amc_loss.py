"""Triton amc_loss (docs/design.md#22-amc_loss): the all-pairs loss in O(N) memory, and the official
halves.

pairs="all": one program per block of rows streams column tiles; ℓ_ij never leaves the chip.
"mean"/"sum" need each unordered pair once, so a row block streams only the column blocks from
its own on (the upper triangle: half the arccos work, which bounds this kernel on GPUs);
"none" needs the per-anchor sums r_i = Σ_{j≠i} ℓ_ij, so it streams every column block. Both
are deterministic: no atomics. The backward streams full rows: with per-anchor weights w (from
the reduction and the upstream gradient), ∂L/∂c_ij = (w_i + w_j)·ℓ'(θ_ij)·θ'(c_ij) is
symmetric, so ∂L/∂x̂_i = Σ_{j≠i} ∂L/∂c_ij·x̂_j needs no column pass. Tiles are recomputed.
pairs="halves": one kernel of row-wise products for the pairs (k, k + ⌊N/2⌋).
Then the F.normalize backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._dispatch import interpreter_enabled
from .._register import forward_function, register_autograd
from .._spec import AMC_LOSS, compute_dtype
from ._common import launch, mean_weights, not_computed, reduce, scalar, triton_op
from ._math import amc_pair_loss, amc_pair_loss_grad, clamped_arccos, clamped_arccos_grad
from ._tiles import (
    grad_operand,
    inv_norms,
    load_rows,
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


@triton.jit
def amc_all_fwd_kernel(
    x_ptr,
    inv_ptr,
    labels_ptr,
    margin_ptr,
    out_ptr,
    N,
    D,
    stride_n,
    stride_d,
    FULL_ROWS: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_i = Σ_j ℓ_ij over j ≠ i (FULL_ROWS) or over j > i (the upper triangle), with
    # ℓ_ij = S_ij·θ_ij² + (1 − S_ij)·max(0, m − θ_ij)², θ_ij = arccos(clamp(c_ij)) and
    # c_ij = ⟨x_i, x_j⟩·inv_i·inv_j.
    # Grid: (cdiv(N, BLOCK_M),): a block of rows streaming BLOCK_N columns, from column 0
    # (FULL_ROWS) or from the row block's first row. Accumulation: fp32 (fp64 for fp64 inputs).
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    inv_r = tl.load(inv_ptr + rows, mask=row_mask, other=0.0)
    label_r = tl.load(labels_ptr + rows, mask=row_mask, other=0)
    margin = tl.load(margin_ptr)
    total = tl.zeros([BLOCK_M], dtype=inv_r.dtype)
    a_tile = row_tile(x_ptr, rows, row_mask, D, stride_n, stride_d, SINGLE, BLOCK_D)
    start = 0 if FULL_ROWS else pid * BLOCK_M
    for n0 in range(start, N, BLOCK_N):
        cols, col_mask, _, _, _, cosine = pair_tile(
            a_tile, x_ptr, rows, row_mask, inv_r, x_ptr, inv_ptr, n0, N, 0, D,
            stride_n, stride_d, stride_n, stride_d,
            KIND, SINGLE, SINGLE, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        label_c = tl.load(labels_ptr + cols, mask=col_mask, other=0)
        theta = clamped_arccos(cosine, FP64)
        loss = amc_pair_loss(theta, label_r[:, None] == label_c[None, :], margin)
        keep = rows[:, None] != cols[None, :] if FULL_ROWS else rows[:, None] < cols[None, :]
        keep = keep & col_mask[None, :]
        total += tl.sum(tl.where(keep, loss, 0.0), axis=1)
    tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def amc_all_bwd_kernel(
    x_ptr,
    inv_ptr,
    labels_ptr,
    margin_ptr,
    weight_ptr,
    out_ptr,
    N,
    D,
    stride_n,
    stride_d,
    stride_on,
    stride_od,
    AT_BOUNDS: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    GRAD_KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_i = ∂L/∂x̂_i = Σ_{j≠i} (w_i + w_j)·ℓ'(θ_ij)·θ'(c_ij)·inv_j·x_j, c_ij recomputed per tile.
    # Grid: (cdiv(N, BLOCK_M), cdiv(D, BLOCK_D)): a block of rows and one chunk of D per program,
    # streaming every column block. Accumulation: fp32 (fp64 for fp64 inputs).
    rows, row_mask = row_block(N, BLOCK_M)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    inv_r = tl.load(inv_ptr + rows, mask=row_mask, other=0.0)
    label_r = tl.load(labels_ptr + rows, mask=row_mask, other=0)
    weight_r = tl.load(weight_ptr + rows, mask=row_mask, other=0.0)
    margin = tl.load(margin_ptr)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=inv_r.dtype)
    a_tile = row_tile(x_ptr, rows, row_mask, D, stride_n, stride_d, SINGLE, BLOCK_D)
    for n0 in range(0, N, BLOCK_N):
        cols, col_mask, b_tile, _, inv_c, cosine = pair_tile(
            a_tile, x_ptr, rows, row_mask, inv_r, x_ptr, inv_ptr, n0, N, d0, D,
            stride_n, stride_d, stride_n, stride_d,
            KIND, SINGLE, True, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        label_c = tl.load(labels_ptr + cols, mask=col_mask, other=0)
        weight_c = tl.load(weight_ptr + cols, mask=col_mask, other=0.0)
        theta = clamped_arccos(cosine, FP64)
        same = label_r[:, None] == label_c[None, :]
        slope = amc_pair_loss_grad(theta, same, margin) * clamped_arccos_grad(
            cosine, FP64, AT_BOUNDS
        )
        keep = (rows[:, None] != cols[None, :]) & col_mask[None, :]
        g = tl.where(keep, (weight_r[:, None] + weight_c[None, :]) * slope * inv_c[None, :], 0.0)
        acc = mma(acc, grad_operand(g, b_tile, GRAD_KIND), operand(b_tile, GRAD_KIND), GRAD_KIND)
    store_rows(out_ptr, acc, rows, row_mask, d0, D, stride_on, stride_od, BLOCK_D)


@triton.jit
def halves_cosine(
    x_ptr,
    inv_ptr,
    rows,
    partners,
    mask,
    D,
    stride_n,
    stride_d,
    FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """c_k = ⟨x_k, x_p⟩·inv_k·inv_p for the rows k and their partners p, over D in chunks."""
    dot = tl.zeros([BLOCK_M], dtype=tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        a = load_rows(x_ptr, rows, mask, d0, D, stride_n, stride_d, BLOCK_D).to(dot.dtype)
        b = load_rows(x_ptr, partners, mask, d0, D, stride_n, stride_d, BLOCK_D).to(dot.dtype)
        dot += tl.sum(a * b, axis=1)
    inv_k = tl.load(inv_ptr + rows, mask=mask, other=0.0)
    inv_p = tl.load(inv_ptr + partners, mask=mask, other=0.0)
    return dot * inv_k * inv_p


@triton.jit
def amc_halves_fwd_kernel(
    x_ptr,
    inv_ptr,
    labels_ptr,
    margin_ptr,
    out_ptr,
    H,
    D,
    stride_n,
    stride_d,
    FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_k = ℓ(θ_k, S_k) for the pairs (k, k + H), k < H; θ_k from c_k = ⟨x_k, x_{k+H}⟩·inv·inv.
    # Grid: (cdiv(H, BLOCK_M),): a block of pairs, D in BLOCK_D chunks.
    # Accumulation: fp32 (fp64 for fp64 inputs).
    rows, mask = row_block(H, BLOCK_M)
    cosine = halves_cosine(
        x_ptr, inv_ptr, rows, rows + H, mask, D, stride_n, stride_d, FP64, BLOCK_M, BLOCK_D
    )
    same = tl.load(labels_ptr + rows, mask=mask) == tl.load(labels_ptr + rows + H, mask=mask)
    loss = amc_pair_loss(clamped_arccos(cosine, FP64), same, tl.load(margin_ptr))
    tl.store(out_ptr + rows, loss, mask=mask)


@triton.jit
def amc_halves_bwd_kernel(
    x_ptr,
    inv_ptr,
    labels_ptr,
    margin_ptr,
    weight_ptr,
    out_ptr,
    H,
    D,
    stride_n,
    stride_d,
    stride_on,
    stride_od,
    AT_BOUNDS: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # With g_k = w_k·ℓ'(θ_k)·θ'(c_k): out_k = ∂L/∂x̂_k = g_k·inv_p·x_p and out_p = g_k·inv_k·x_k
    # for the pairs (k, p = k + H); c_k recomputed. out must start at zero (an odd last row).
    # Grid: (cdiv(H, BLOCK_M),): a block of pairs, D in BLOCK_D chunks (twice).
    # Accumulation: fp32 (fp64 for fp64 inputs).
    rows, mask = row_block(H, BLOCK_M)
    partners = rows + H
    cosine = halves_cosine(
        x_ptr, inv_ptr, rows, partners, mask, D, stride_n, stride_d, FP64, BLOCK_M, BLOCK_D
    )
    same = tl.load(labels_ptr + rows, mask=mask) == tl.load(labels_ptr + partners, mask=mask)
    theta = clamped_arccos(cosine, FP64)
    slope = amc_pair_loss_grad(theta, same, tl.load(margin_ptr))
    slope *= clamped_arccos_grad(cosine, FP64, AT_BOUNDS)
    g = tl.load(weight_ptr + rows, mask=mask, other=0.0) * slope
    g_k = g * tl.load(inv_ptr + partners, mask=mask, other=0.0)
    g_p = g * tl.load(inv_ptr + rows, mask=mask, other=0.0)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dim_mask = mask[:, None] & (dims < D)[None, :]
        x_k = load_rows(x_ptr, rows, mask, d0, D, stride_n, stride_d, BLOCK_D).to(g.dtype)
        x_p = load_rows(x_ptr, partners, mask, d0, D, stride_n, stride_d, BLOCK_D).to(g.dtype)
        out_k = out_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od
        out_p = out_ptr + partners[:, None] * stride_on + dims[None, :] * stride_od
        tl.store(out_k, g_k[:, None] * x_p, mask=dim_mask)
        tl.store(out_p, g_p[:, None] * x_k, mask=dim_mask)


def _halves_blocks(d: int, fp64: bool) -> dict[str, int]:
    """Pair blocks × feature chunks; fp64 chunks of 32 keep the backward's tiles in registers."""
    if interpreter_enabled():
        return {"BLOCK_M": 16, "BLOCK_D": 16}
    block_d = min(32 if fp64 else 128, triton.next_power_of_2(max(d, 16)))
    return {"BLOCK_M": 32, "BLOCK_D": block_d, "num_warps": 4}


@triton_op("amc_loss_triton_fwd")
def amc_loss_fwd(
    features: torch.Tensor, labels: torch.Tensor, margin: float, pairs: str, reduction: str
) -> torch.Tensor:
    """The loss: a scalar, or the [⌊N/2⌋] pair / [N] per-anchor vector for "none"."""
    x, labels = features, labels.contiguous()
    (n, d), dtype = x.shape, compute_dtype(x.dtype)
    inv = inv_norms(x)
    fp64 = x.dtype == torch.float64
    if pairs == "halves":
        half = n // 2
        losses = torch.empty(half, dtype=dtype, device=x.device)
        if half:
            blocks = _halves_blocks(d, fp64)
            launch(
                amc_halves_fwd_kernel, (triton.cdiv(half, blocks["BLOCK_M"]),),
                x, inv, labels, scalar(margin, x), losses, half, d, *x.stride(),
                FP64=fp64, **blocks,
            )  # fmt: skip
        return reduce(losses, reduction, half)
    full_rows = reduction == "none"
    sums = torch.zeros(n, dtype=dtype, device=x.device)
    if n > 1:
        tiles = pairwise_tiles(x.dtype, d, False)
        kind, _ = mma_kinds(x.dtype)
        launch(
            amc_all_fwd_kernel, (triton.cdiv(n, tiles.block_m),),
            x, inv, labels, scalar(margin, x), sums, n, d, *x.stride(),
            FULL_ROWS=full_rows, FP64=fp64, KIND=kind, **tiles.kwargs(d),
        )  # fmt: skip
    if full_rows:
        return sums / max(n - 1, 1)
    return reduce(sums, reduction, n * (n - 1) // 2)


def _anchor_weights(grad: torch.Tensor, n: int, reduction: str) -> torch.Tensor:
    """w with ∂L/∂c_ij = (w_i + w_j)·∂ℓ_ij/∂c_ij for every unordered pair (all pairs)."""
    if reduction == "none":
        return grad / max(n - 1, 1)
    pairs = max(n * (n - 1) // 2, 1) if reduction == "mean" else 1
    return (grad / (2 * pairs)).expand(n).contiguous()


@triton_op("amc_loss_triton_bwd")
def amc_loss_bwd(
    grad: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    pairs: str,
    reduction: str,
    clamp_grad_at_bounds: bool,
    output_mask: list[bool],
) -> torch.Tensor:
    """∂L/∂features in the features' dtype (empty when output_mask[0] is false)."""
    x, labels = features, labels.contiguous()
    if not output_mask[0]:
        return not_computed(x)
    (n, d), dtype = x.shape, compute_dtype(x.dtype)
    grad = grad.to(dtype)
    grad_hat = torch.zeros((n, d), dtype=dtype, device=x.device)
    inv = inv_norms(x)
    fp64 = x.dtype == torch.float64
    if pairs == "halves" and n // 2 and d:
        half = n // 2
        blocks = _halves_blocks(d, fp64)
        launch(
            amc_halves_bwd_kernel, (triton.cdiv(half, blocks["BLOCK_M"]),),
            x, inv, labels, scalar(margin, x), mean_weights(grad, half, reduction).contiguous(),
            grad_hat, half, d, *x.stride(), *grad_hat.stride(),
            AT_BOUNDS=clamp_grad_at_bounds, FP64=fp64, **blocks,
        )  # fmt: skip
    elif pairs == "all" and n > 1 and d:
        tiles = pairwise_tiles(x.dtype, d, True)
        kind, grad_kind = mma_kinds(x.dtype)
        launch(
            amc_all_bwd_kernel, (triton.cdiv(n, tiles.block_m), triton.cdiv(d, tiles.block_d)),
            x, inv, labels, scalar(margin, x), _anchor_weights(grad, n, reduction), grad_hat,
            n, d, *x.stride(), *grad_hat.stride(),
            AT_BOUNDS=clamp_grad_at_bounds, FP64=fp64, KIND=kind, GRAD_KIND=grad_kind,
            **tiles.kwargs(d),
        )  # fmt: skip
    return normalize_backward(x, grad_hat, clamp_grad_at_bounds).to(x.dtype)


register_autograd(
    AMC_LOSS, "amc_loss_triton_fwd", "amc_loss_triton_bwd", "triton", extras=(CLAMP_GRAD_AT_BOUNDS,)
)
amc_loss = forward_function(AMC_LOSS, "amc_loss_triton_fwd")
