"""Triton angular_distance (docs/design.md#21-angular_distance): fused normalisation, product, clamp
and arccos.

Forward: θ_ij = arccos(clamp(⟨x_i, y_j⟩·ix_i·iy_j, −1+δ, 1−δ)) with ix = 1/max(‖x‖, NORM_EPS)
computed first by a small kernel, one output tile per program.
Backward: the cosine tiles are recomputed (never derived from θ), G = grad ⊙ dθ/dc, and
∂L/∂x̂ = G·ŷ, ∂L/∂ŷ = Gᵀ·x̂ come from two launches of one kernel with the roles of x and y
swapped (the transposed grad is a stride swap); a gradient that output_mask does not request is
not launched. With y = None, x̂ is on both sides and one launch with G = (grad + gradᵀ) ⊙ dθ/dc
gives the sum of both parts. Then the F.normalize backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd
from .._spec import ANGULAR_DISTANCE, NORM_EPS, compute_dtype
from ._common import launch, not_computed, triton_op
from ._math import clamped_arccos, clamped_arccos_grad
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

INV_EPS_SQUARED = tl.constexpr(1.0 / (NORM_EPS * NORM_EPS))


@triton.jit
def exact_diagonal(cosine, gram, rows, cols):
    """⟨x̂_i, x̂_i⟩ = min(1, ‖x_i‖² / eps²) exactly on the diagonal of a self-similarity tile.

    Rounding would leave the computed value a few ulps on either side of the clamp 1 − 2⁻²³
    in fp32; the exact value keeps θ_ii and its zero gradient independent of that noise.
    """
    exact = tl.minimum(gram * INV_EPS_SQUARED, 1.0)
    return tl.where(rows[:, None] == cols[None, :], exact, cosine)


@triton.jit
def angular_fwd_kernel(
    x_ptr,
    y_ptr,
    ix_ptr,
    iy_ptr,
    out_ptr,
    N,
    M,
    D,
    stride_xn,
    stride_xd,
    stride_yn,
    stride_yd,
    stride_on,
    stride_om,
    SYMMETRIC: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # θ_ij = arccos(clamp(⟨x_i, y_j⟩·ix_i·iy_j, −1+δ, 1−δ)), ix = 1/max(‖x‖, NORM_EPS); when
    # SYMMETRIC (y = x) the diagonal cosine is its exact value min(1, ‖x_i‖²/NORM_EPS²).
    # Grid: (cdiv(N, BLOCK_M), cdiv(M, BLOCK_N)): one [BLOCK_M, BLOCK_N] output tile per program,
    # the product over D in BLOCK_D chunks. Accumulation: fp32 (fp64 for fp64 inputs).
    rows, row_mask = row_block(N, BLOCK_M)
    ix = tl.load(ix_ptr + rows, mask=row_mask, other=0.0)
    cols, col_mask, _, gram, _, cosine = pair_tile(
        row_tile(x_ptr, rows, row_mask, D, stride_xn, stride_xd, SINGLE, BLOCK_D),
        x_ptr, rows, row_mask, ix, y_ptr, iy_ptr, tl.program_id(1).to(tl.int64) * BLOCK_N, M,
        0, D, stride_xn, stride_xd, stride_yn, stride_yd,
        KIND, SINGLE, SINGLE, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    if SYMMETRIC:
        cosine = exact_diagonal(cosine, gram, rows, cols)
    theta = clamped_arccos(cosine, FP64)
    out = out_ptr + rows[:, None] * stride_on + cols[None, :] * stride_om
    tl.store(out, theta.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def angular_bwd_kernel(
    p_ptr,
    q_ptr,
    ip_ptr,
    iq_ptr,
    g_ptr,
    out_ptr,
    P,
    Q,
    D,
    stride_pn,
    stride_pd,
    stride_qn,
    stride_qd,
    stride_gp,
    stride_gq,
    stride_on,
    stride_od,
    SYMMETRIC: tl.constexpr,
    AT_BOUNDS: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    GRAD_KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_i = ∂L/∂p̂_i = Σ_j G_ij·iq_j·q_j with G_ij = g_ij·dθ/dc(c_ij), plus g_ji·dθ/dc(c_ij)
    # when SYMMETRIC (q = p, y = None); c_ij = ⟨p_i, q_j⟩·ip_i·iq_j is recomputed per tile, with
    # the exact diagonal when SYMMETRIC, as in the forward.
    # Grid: (cdiv(P, BLOCK_M), cdiv(D, BLOCK_D)): a block of rows of p and one chunk of D per
    # program, streaming q in BLOCK_N rows. Accumulation: fp32 (fp64 for fp64 inputs).
    rows, row_mask = row_block(P, BLOCK_M)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    ip = tl.load(ip_ptr + rows, mask=row_mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ip.dtype)
    a_tile = row_tile(p_ptr, rows, row_mask, D, stride_pn, stride_pd, SINGLE, BLOCK_D)
    for n0 in range(0, Q, BLOCK_N):
        cols, col_mask, q_tile, gram, iq, cosine = pair_tile(
            a_tile, p_ptr, rows, row_mask, ip, q_ptr, iq_ptr, n0, Q, d0, D,
            stride_pn, stride_pd, stride_qn, stride_qd,
            KIND, SINGLE, True, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        if SYMMETRIC:
            cosine = exact_diagonal(cosine, gram, rows, cols)
        mask = row_mask[:, None] & col_mask[None, :]
        g_offsets = rows[:, None] * stride_gp + cols[None, :] * stride_gq
        g = tl.load(g_ptr + g_offsets, mask=mask, other=0.0).to(acc.dtype)
        if SYMMETRIC:
            g_t = rows[:, None] * stride_gq + cols[None, :] * stride_gp
            g += tl.load(g_ptr + g_t, mask=mask, other=0.0).to(acc.dtype)
        weight = g * clamped_arccos_grad(cosine, FP64, AT_BOUNDS) * iq[None, :]
        acc = mma(
            acc, grad_operand(weight, q_tile, GRAD_KIND), operand(q_tile, GRAD_KIND), GRAD_KIND
        )
    store_rows(out_ptr, acc, rows, row_mask, d0, D, stride_on, stride_od, BLOCK_D)


@triton_op("angular_distance_triton_fwd")
def angular_distance_fwd(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """θ [N, M] in x's dtype (y = None: M = N, y = x)."""
    other = x if y is None else y
    (n, d), m = x.shape, other.shape[0]
    out = x.new_empty((n, m))
    if out.numel() == 0:
        return out
    ix = inv_norms(x)
    iy = ix if y is None else inv_norms(other)
    tiles = pairwise_tiles(x.dtype, d, False)
    kind, _ = mma_kinds(x.dtype)
    launch(
        angular_fwd_kernel,
        (triton.cdiv(n, tiles.block_m), triton.cdiv(m, tiles.block_n)),
        x, other, ix, iy, out, n, m, d, *x.stride(), *other.stride(), *out.stride(),
        SYMMETRIC=y is None, FP64=x.dtype == torch.float64, KIND=kind, **tiles.kwargs(d),
    )  # fmt: skip
    return out


def _grad_input(
    p: torch.Tensor,
    q: torch.Tensor,
    ip: torch.Tensor,
    iq: torch.Tensor,
    grad: torch.Tensor,
    grad_strides: tuple[int, int],
    symmetric: bool,
    at_bounds: bool,
) -> torch.Tensor:
    """∂L/∂p [P, D] in p's dtype, from grad [P, Q] (given by its strides)."""
    (rows, d), cols = p.shape, q.shape[0]
    grad_hat = torch.empty((rows, d), dtype=compute_dtype(p.dtype), device=p.device)
    tiles = pairwise_tiles(p.dtype, d, True)
    kind, grad_kind = mma_kinds(p.dtype)
    launch(
        angular_bwd_kernel,
        (triton.cdiv(rows, tiles.block_m), triton.cdiv(d, tiles.block_d)),
        p, q, ip, iq, grad, grad_hat, rows, cols, d, *p.stride(), *q.stride(), *grad_strides,
        *grad_hat.stride(),
        SYMMETRIC=symmetric, AT_BOUNDS=at_bounds, FP64=p.dtype == torch.float64, KIND=kind,
        GRAD_KIND=grad_kind, **tiles.kwargs(d),
    )  # fmt: skip
    return normalize_backward(p, grad_hat, at_bounds).to(p.dtype)


@triton_op("angular_distance_triton_bwd")
def angular_distance_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    clamp_grad_at_bounds: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂y) in the inputs' dtype; each empty when not requested (∂L/∂y: or y None)."""
    want_x, want_y = output_mask[0], output_mask[1] and y is not None
    other = x if y is None else y
    grad_x = torch.zeros_like(x) if want_x else not_computed(x)
    grad_y = torch.zeros_like(other) if want_y else not_computed(x)
    if grad.numel() == 0 or x.shape[1] == 0:
        return grad_x, grad_y
    ix = inv_norms(x)
    iy = ix if y is None else inv_norms(other)
    strides = (grad.stride(0), grad.stride(1))
    if want_x:
        grad_x = _grad_input(x, other, ix, iy, grad, strides, y is None, clamp_grad_at_bounds)
    if want_y:
        grad_y = _grad_input(other, x, iy, ix, grad, strides[::-1], False, clamp_grad_at_bounds)
    return grad_x, grad_y


register_autograd(
    ANGULAR_DISTANCE,
    "angular_distance_triton_fwd",
    "angular_distance_triton_bwd",
    "triton",
    extras=(CLAMP_GRAD_AT_BOUNDS,),
)
angular_distance = forward_function(ANGULAR_DISTANCE, "angular_distance_triton_fwd")
