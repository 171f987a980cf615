"""Triton angular_distance (DESIGN §2.1): fused normalisation, product, clamp and arccos.

Forward: θ_ij = arccos(clamp(⟨x_i, y_j⟩·ix_i·iy_j, −1+δ, 1−δ)) with ix = 1/max(‖x‖, 1e-12)
computed first by a small kernel, one output tile per program.
Backward: the cosine tiles are recomputed (never derived from θ), G = grad ⊙ dθ/dc, and
∂L/∂x̂ = G·ŷ, ∂L/∂ŷ = Gᵀ·x̂ come from two launches of one kernel with the roles of x and y
swapped (the transposed grad is a stride swap). With y = None, x̂ is on both sides and one launch
with G = (grad + gradᵀ) ⊙ dθ/dc gives the sum of both parts. Then the F.normalize backward.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from ._common import register_triton
from ._math import clamped_arccos, clamped_arccos_grad
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

OP = "angular_distance"


INV_EPS_SQUARED = tl.constexpr(1e24)  # 1 / (1e-12)²


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
    # θ_ij = arccos(clamp(⟨x_i, y_j⟩·ix_i·iy_j, −1+δ, 1−δ)), ix = 1/max(‖x‖, 1e-12); when
    # SYMMETRIC (y = x) the diagonal cosine is its exact value min(1, ‖x_i‖²/1e-24).
    # Grid: (cdiv(N, BLOCK_M), cdiv(M, BLOCK_N)): one [BLOCK_M, BLOCK_N] output tile per program,
    # the product over D in BLOCK_D chunks. Accumulation: fp32 (fp64 for fp64 inputs).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    col_mask = cols < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64 if FP64 else tl.float32)
    a_tile = 0
    b_tile = 0
    if SINGLE:
        a_tile = load_rows(x_ptr, rows, row_mask, 0, D, stride_xn, stride_xd, BLOCK_D)
        b_tile = load_rows(y_ptr, cols, col_mask, 0, D, stride_yn, stride_yd, BLOCK_D)
    acc = gram_tile(
        acc,
        a_tile,
        b_tile,
        x_ptr,
        rows,
        row_mask,
        y_ptr,
        cols,
        col_mask,
        D,
        stride_xn,
        stride_xd,
        stride_yn,
        stride_yd,
        KIND,
        SINGLE,
        BLOCK_D,
    )
    ix = tl.load(ix_ptr + rows, mask=row_mask, other=0.0)
    iy = tl.load(iy_ptr + cols, mask=col_mask, other=0.0)
    cosine = acc * ix[:, None] * iy[None, :]
    if SYMMETRIC:
        cosine = exact_diagonal(cosine, acc, rows, cols)
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
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    dims = d0 + tl.arange(0, BLOCK_D)
    row_mask = rows < P
    ip = tl.load(ip_ptr + rows, mask=row_mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float64 if FP64 else tl.float32)
    a_tile = 0
    if SINGLE:
        a_tile = load_rows(p_ptr, rows, row_mask, 0, D, stride_pn, stride_pd, BLOCK_D)
    for n0 in range(0, Q, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < Q
        mask = row_mask[:, None] & col_mask[None, :]
        q_tile = load_rows(q_ptr, cols, col_mask, d0, D, stride_qn, stride_qd, BLOCK_D)
        cosine = gram_tile(
            tl.zeros([BLOCK_M, BLOCK_N], dtype=acc.dtype),
            a_tile,
            q_tile,
            p_ptr,
            rows,
            row_mask,
            q_ptr,
            cols,
            col_mask,
            D,
            stride_pn,
            stride_pd,
            stride_qn,
            stride_qd,
            KIND,
            SINGLE,
            BLOCK_D,
        )
        iq = tl.load(iq_ptr + cols, mask=col_mask, other=0.0)
        if SYMMETRIC:
            cosine = exact_diagonal(cosine * ip[:, None] * iq[None, :], cosine, rows, cols)
        else:
            cosine = cosine * ip[:, None] * iq[None, :]
        g_offsets = rows[:, None] * stride_gp + cols[None, :] * stride_gq
        g = tl.load(g_ptr + g_offsets, mask=mask, other=0.0).to(acc.dtype)
        if SYMMETRIC:
            g_t = rows[:, None] * stride_gq + cols[None, :] * stride_gp
            g += tl.load(g_ptr + g_t, mask=mask, other=0.0).to(acc.dtype)
        weight = g * clamped_arccos_grad(cosine, FP64, AT_BOUNDS) * iq[None, :]
        acc = mma(
            acc, grad_operand(weight, q_tile, GRAD_KIND), operand(q_tile, GRAD_KIND), GRAD_KIND
        )
    out = out_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od
    tl.store(out, acc, mask=row_mask[:, None] & (dims < D)[None, :])


@torch.library.triton_op("amc_kernels::angular_distance_triton_fwd", mutates_args=())
def angular_distance_fwd(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """θ [N, M] in x's dtype (y = None: M = N, y = x)."""
    other = x if y is None else y
    (n, d), m = x.shape, other.shape[0]
    out = x.new_empty((n, m))
    if out.numel() == 0:
        return out
    ix = inv_norms(x)
    iy = ix if y is None else inv_norms(other)
    tiles = pairwise_tiles(x.dtype, d)
    kind, _ = mma_kinds(x.dtype)
    launch(
        angular_fwd_kernel,
        (triton.cdiv(n, tiles.block_m), triton.cdiv(m, tiles.block_n)),
        x,
        other,
        ix,
        iy,
        out,
        n,
        m,
        d,
        x.stride(0),
        x.stride(1),
        other.stride(0),
        other.stride(1),
        out.stride(0),
        out.stride(1),
        SYMMETRIC=y is None,
        FP64=x.dtype == torch.float64,
        KIND=kind,
        **tiles.kwargs(d),
    )
    return out


def _grad_hat(
    p: torch.Tensor,
    q: torch.Tensor,
    ip: torch.Tensor,
    iq: torch.Tensor,
    grad: torch.Tensor,
    grad_strides: tuple[int, int],
    symmetric: bool,
) -> torch.Tensor:
    """∂L/∂p̂ [P, D] in the compute dtype, from grad [P, Q] (given by its strides)."""
    (rows, d), cols = p.shape, q.shape[0]
    out = torch.empty((rows, d), dtype=compute_dtype(p.dtype), device=p.device)
    tiles = pairwise_tiles(p.dtype, d, backward=True)
    kind, grad_kind = mma_kinds(p.dtype)
    launch(
        angular_bwd_kernel,
        (triton.cdiv(rows, tiles.block_m), triton.cdiv(d, tiles.block_d)),
        p,
        q,
        ip,
        iq,
        grad,
        out,
        rows,
        cols,
        d,
        p.stride(0),
        p.stride(1),
        q.stride(0),
        q.stride(1),
        grad_strides[0],
        grad_strides[1],
        out.stride(0),
        out.stride(1),
        SYMMETRIC=symmetric,
        AT_BOUNDS=CLAMP_GRAD_AT_BOUNDS,
        FP64=p.dtype == torch.float64,
        KIND=kind,
        GRAD_KIND=grad_kind,
        **tiles.kwargs(d),
    )
    return out


@torch.library.triton_op("amc_kernels::angular_distance_triton_bwd", mutates_args=())
def angular_distance_bwd(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂y) in the inputs' dtype; ∂L/∂y is empty when y is None."""
    other = x if y is None else y
    grad_y = x.new_empty((0,)) if y is None else torch.zeros_like(y)
    if grad.numel() == 0 or x.shape[1] == 0:
        return torch.zeros_like(x), grad_y
    ix = inv_norms(x)
    iy = ix if y is None else inv_norms(other)
    strides = (grad.stride(0), grad.stride(1))
    grad_x = normalize_backward(x, _grad_hat(x, other, ix, iy, grad, strides, y is None))
    if y is not None:
        grad_y_hat = _grad_hat(other, x, iy, ix, grad, strides[::-1], False)
        grad_y = normalize_backward(other, grad_y_hat).to(y.dtype)
    return grad_x.to(x.dtype), grad_y


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, y = ctx.saved_tensors
    grad_x, grad_y = angular_distance_bwd(grad, x, y)
    return grad_x, (None if y is None else grad_y)


angular_distance_fwd.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(OP, angular_distance_bwd)


def angular_distance(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's signature on the Triton kernels (inputs validated by the caller)."""
    return angular_distance_fwd(x, y)


register_triton(OP, angular_distance)
