"""The Triton kernels of cgc_loss (docs/design.md#26-cgc_loss); the host side and the math are in
cgc_loss.py.

Batched matmul (per-axis products, the Gram ⟨c'_b, Z_j⟩, Ω·Z), the per-sample sandwiches
L_b M_b R_b with their bilinear forms, and the cross-entropy over the B×B cosines with an
online log-sum-exp (forward) and its chain-rule coefficients (backward). The cosines come from
the statistics [5, B] (⟨X,X⟩, ⟨X,Y⟩, ΣX, Σup(c), ΣY) and the Gram yy [B, B] through map_inner.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._spec import MAP_EPS
from ._tiles import MMA_FP64, mma

_EPS = tl.constexpr(MAP_EPS)


@triton.jit
def cgc_matmul_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_ab,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bk,
    stride_bn,
    stride_ob,
    stride_om,
    stride_on,
    KIND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # out[g] = a[g] @ b[g] for a [G, M, K], b [G, K, N] given by strides (stride 0 broadcasts).
    # Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), G): one output tile per program, K streamed
    # in BLOCK_K chunks; loads cast to out's dtype at once. Accumulation: out's dtype (fp32 with
    # IEEE products, or fp64).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(2).to(tl.int64)
    dtype = out_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a_offsets = g * stride_ab + rows[:, None] * stride_am + ks[None, :] * stride_ak
        a_mask = (rows < M)[:, None] & (ks < K)[None, :]
        a = tl.load(a_ptr + a_offsets, mask=a_mask, other=0.0).to(dtype)
        b_offsets = g * stride_bb + ks[:, None] * stride_bk + cols[None, :] * stride_bn
        b_mask = (ks < K)[:, None] & (cols < N)[None, :]
        b = tl.load(b_ptr + b_offsets, mask=b_mask, other=0.0).to(dtype)
        acc = mma(acc, a, b, KIND)
    out = out_ptr + g * stride_ob + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out, acc, mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def load_tile(
    ptr,
    b,
    stride_b,
    stride_r,
    stride_c,
    R,
    C,
    dtype: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Matrix b [R, C] of a strided batch as a zero-padded [BLOCK_R, BLOCK_C] tile in dtype."""
    r = tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.arange(0, BLOCK_C).to(tl.int64)
    offsets = b * stride_b + r[:, None] * stride_r + c[None, :] * stride_c
    mask = (r < R)[:, None] & (c < C)[None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(dtype)


@triton.jit
def load_vector(ptr, b, stride_b, n, dtype: tl.constexpr, BLOCK: tl.constexpr):
    """Vector b [n] of a batch with rows `stride_b` apart, zero-padded to BLOCK, in dtype."""
    i = tl.arange(0, BLOCK).to(tl.int64)
    return tl.load(ptr + b * stride_b + i, mask=i < n, other=0.0).to(dtype)


@triton.jit
def cgc_sandwich_kernel(
    m_ptr,
    n_ptr,
    l_ptr,
    r_ptr,
    lv_ptr,
    rv_ptr,
    out_ptr,
    dot_ptr,
    form_ptr,
    H,
    W,
    stride_mb,
    stride_mh,
    stride_mw,
    stride_nb,
    stride_nh,
    stride_nw,
    stride_lb,
    stride_li,
    stride_lk,
    stride_rb,
    stride_rk,
    stride_rj,
    stride_lvb,
    stride_rvb,
    STORE: tl.constexpr,
    FP64: tl.constexpr,
    KIND: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # T_b = L_b M_b R_b (L [h, h], M [h, w], R [w, w]), dot_b = ⟨N_b, T_b⟩, form_b = l_bᵀ N_b r_b;
    # T_b stored (contiguous [B, h, w]) when STORE. Batch strides 0 broadcast a matrix.
    # Grid: (B,): one sample per program, the whole h×w map in one [BLOCK_H, BLOCK_W] tile.
    # Accumulation: fp32 with IEEE products (fp64 for fp64 maps); maps cast at once on load.
    b = tl.program_id(0).to(tl.int64)
    dtype = tl.float64 if FP64 else tl.float32
    right = load_tile(r_ptr, b, stride_rb, stride_rk, stride_rj, W, W, dtype, BLOCK_W, BLOCK_W)
    t = tl.zeros([BLOCK_H, BLOCK_W], dtype=dtype)
    if KIND == MMA_FP64:
        # Σ_k L[:, k] ⊗ (M[k, :] R): the broadcast product of mma would hold a BLOCK³ cube.
        h = tl.arange(0, BLOCK_H).to(tl.int64)
        w = tl.arange(0, BLOCK_W).to(tl.int64)
        for k in range(0, H):
            l_col = l_ptr + b * stride_lb + h * stride_li + k * stride_lk
            m_row = m_ptr + b * stride_mb + k * stride_mh + w * stride_mw
            l_col = tl.load(l_col, mask=h < H, other=0.0).to(dtype)
            m_row = tl.load(m_row, mask=w < W, other=0.0).to(dtype)
            t += l_col[:, None] * tl.sum(m_row[:, None] * right, axis=0)[None, :]
    else:
        m = load_tile(m_ptr, b, stride_mb, stride_mh, stride_mw, H, W, dtype, BLOCK_H, BLOCK_W)
        left = load_tile(l_ptr, b, stride_lb, stride_li, stride_lk, H, H, dtype, BLOCK_H, BLOCK_H)
        t = mma(t, mma(tl.zeros_like(t), left, m, KIND), right, KIND)
    n = load_tile(n_ptr, b, stride_nb, stride_nh, stride_nw, H, W, dtype, BLOCK_H, BLOCK_W)
    lv = load_vector(lv_ptr, b, stride_lvb, H, dtype, BLOCK_H)
    rv = load_vector(rv_ptr, b, stride_rvb, W, dtype, BLOCK_W)
    tl.store(dot_ptr + b, tl.sum(tl.sum(n * t, axis=1), axis=0))
    tl.store(form_ptr + b, tl.sum(lv * tl.sum(n * rv[None, :], axis=1), axis=0))
    if STORE:
        h = tl.arange(0, BLOCK_H).to(tl.int64)
        w = tl.arange(0, BLOCK_W).to(tl.int64)
        out = out_ptr + b * H * W + h[:, None] * W + w[None, :]
        tl.store(out, t, mask=(h < H)[:, None] & (w < W)[None, :])


@triton.jit
def map_inner(xy, sum_x, sum_y, sigma_x, sigma_y, count):
    """⟨X/σx + ε, Y/σy + ε⟩ over `count` pixels from ⟨X, Y⟩ and the sums ΣX, ΣY (math.h)."""
    return (
        xy / (sigma_x * sigma_y)
        + _EPS * (sum_x / sigma_x + sum_y / sigma_y)
        + _EPS * (_EPS * count)
    )


@triton.jit
def aug_stats(stats_ptr, yy_ptr, idx, mask, B, stride_yb, stride_yj, count):
    """(ΣY, σ', ‖v‖) of the samples idx; stats rows: ⟨X,X⟩, ⟨X,Y⟩, ΣX, Σup(c), ΣY."""
    sum_y = tl.load(stats_ptr + 4 * B + idx, mask=mask, other=0.0)
    sigma = sum_y + _EPS
    yy = tl.load(yy_ptr + idx * stride_yb + idx * stride_yj, mask=mask, other=0.0)
    return sum_y, sigma, tl.sqrt(map_inner(yy, sum_y, sum_y, sigma, sigma, count))


@triton.jit
def orig_stats(stats_ptr, idx, mask, B, sum_y, sigma_aug, norm_v, count):
    """(σ, ‖u‖, cos(u, v)) of the samples idx."""
    xx = tl.load(stats_ptr + idx, mask=mask, other=0.0)
    xy = tl.load(stats_ptr + B + idx, mask=mask, other=0.0)
    sum_x = tl.load(stats_ptr + 2 * B + idx, mask=mask, other=0.0)
    sigma = tl.load(stats_ptr + 3 * B + idx, mask=mask, other=0.0) + _EPS
    norm_u = tl.sqrt(map_inner(xx, sum_x, sum_x, sigma, sigma, count))
    positive = map_inner(xy, sum_x, sum_y, sigma, sigma_aug, count) / (norm_u * norm_v)
    return sigma, norm_u, positive


@triton.jit
def anchor_terms(
    stats_ptr, yy_ptr, tau_ptr, B, SIZE, stride_yb, stride_yj,
    FP64: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """The row block of a CE program: (rows, row_mask, count = SIZE², τ, ΣY, σ', ‖v‖, ‖u‖,
    cos(u, v)) of the rows pid·BLOCK_B + [0, BLOCK_B)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    count = (tl.zeros([], tl.float64 if FP64 else tl.float32) + SIZE) * SIZE  # SIZE may be 1
    sum_y, sigma_aug, norm_v = aug_stats(
        stats_ptr, yy_ptr, rows, row_mask, B, stride_yb, stride_yj, count
    )
    _, norm_u, positive = orig_stats(stats_ptr, rows, row_mask, B, sum_y, sigma_aug, norm_v, count)
    return rows, row_mask, count, tl.load(tau_ptr), sum_y, sigma_aug, norm_v, norm_u, positive


@triton.jit
def negative_tile(
    stats_ptr, yy_ptr, rows, row_mask, j0, B, stride_yb, stride_yj, sum_y_r, sigma_r, norm_r,
    count, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """The columns cols = j0 + [0, BLOCK_J) of a CE program: (cols, col_mask, mask, valid
    (mask off the diagonal), cos(v_r, v_c) [R, BLOCK_J] from the Gram tile ⟨Y_r, Y_c⟩, σ'_c,
    ‖v_c‖)."""
    cols = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
    col_mask = cols < B
    sum_y_c, sigma_c, norm_c = aug_stats(
        stats_ptr, yy_ptr, cols, col_mask, B, stride_yb, stride_yj, count
    )
    mask = row_mask[:, None] & col_mask[None, :]
    yy = tl.load(
        yy_ptr + rows[:, None] * stride_yb + cols[None, :] * stride_yj, mask=mask, other=0.0
    )
    inner = map_inner(
        yy, sum_y_r[:, None], sum_y_c[None, :], sigma_r[:, None], sigma_c[None, :], count
    )
    cosine = inner / (norm_r[:, None] * norm_c[None, :])
    valid = mask & (rows[:, None] != cols[None, :])
    return cols, col_mask, mask, valid, cosine, sigma_c, norm_c


@triton.jit
def cgc_ce_fwd_kernel(
    stats_ptr,
    yy_ptr,
    tau_ptr,
    lse_ptr,
    loss_ptr,
    B,
    SIZE,
    stride_yb,
    stride_yj,
    FP64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # logits_b = [cos(u_b, v_b), cos(v_b, v_j) for j ≠ b] / τ; lse_b = log Σ exp logits_b and
    # loss_b = lse_b − logits_b0, the cosines from the statistics (map_inner, math.h).
    # Grid: (cdiv(B, BLOCK_B),): a block of rows per program, streaming BLOCK_J columns with an
    # online max and sum. Accumulation: fp32 (fp64 for fp64 maps).
    rows, row_mask, count, tau, sum_y, sigma_aug, norm_v, _, positive = anchor_terms(
        stats_ptr, yy_ptr, tau_ptr, B, SIZE, stride_yb, stride_yj, FP64, BLOCK_B
    )
    first = positive / tau
    running_max = first
    total = tl.full([BLOCK_B], 1.0, first.dtype)
    for j0 in range(0, B, BLOCK_J):
        _, _, _, valid, cosine, _, _ = negative_tile(
            stats_ptr, yy_ptr, rows, row_mask, j0, B, stride_yb, stride_yj, sum_y, sigma_aug,
            norm_v, count, BLOCK_J,
        )  # fmt: skip
        logits = tl.where(valid, cosine / tau, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        total = total * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), axis=1
        )
        running_max = new_max
    lse = running_max + tl.log(total)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(loss_ptr + rows, lse - first, mask=row_mask)


@triton.jit
def cgc_ce_bwd_kernel(
    stats_ptr,
    yy_ptr,
    tau_ptr,
    scale_ptr,
    lse_ptr,
    omega_ptr,
    coef_ptr,
    B,
    SIZE,
    stride_yb,
    stride_yj,
    STORE_OMEGA: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # With s = grad/(B·τ), p the softmax of each row: d_pos_b = (p_b0 − 1)·s, w_bj = (p_bj + p_jb)·s
    # (j ≠ b; cos(v_b, v_j) enters rows b and j): α_b = d_pos/(‖u‖‖v‖), β_b = −d_pos·cos_b/‖u‖²,
    # Ω_bj = w_bj/(‖v_b‖‖v_j‖), Ω_bb = −(d_pos·cos_b + Σ_j w_bj cos_bj)/‖v_b‖². Stores Ω_bj/σ'_j
    # off the diagonal into omega [B, B] (zeroed; only when STORE_OMEGA: ∂L/∂cam_aug needs it)
    # and coef [6, B] = α, β, Ω_bb, Σ_j Ω_bj, Σ_j Ω_bj ⟨Y_j, Y_b⟩/σ'_j and the row's part of
    # ∂L/∂τ·(−τ), Σ_j (∂L/∂logit_bj)·cos_bj = d_pos·cos_b + Σ_{j≠b} p_bj·s·cos_bj.
    # Grid: (cdiv(B, BLOCK_B),): a block of rows per program, streaming BLOCK_J columns.
    # Accumulation: fp32 (fp64 for fp64 maps).
    rows, row_mask, count, tau, sum_y, sigma_aug, norm_v, norm_u, positive = anchor_terms(
        stats_ptr, yy_ptr, tau_ptr, B, SIZE, stride_yb, stride_yj, FP64, BLOCK_B
    )
    scale = tl.load(scale_ptr)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    d_positive = (tl.exp(positive / tau - lse) - 1.0) * scale
    diagonal = d_positive * positive
    row_tau = diagonal
    omega_sum = tl.zeros([BLOCK_B], positive.dtype)
    omega_gram = tl.zeros([BLOCK_B], positive.dtype)
    for j0 in range(0, B, BLOCK_J):
        cols, col_mask, mask, valid, cosine, sigma_c, norm_c = negative_tile(
            stats_ptr, yy_ptr, rows, row_mask, j0, B, stride_yb, stride_yj, sum_y, sigma_aug,
            norm_v, count, BLOCK_J,
        )  # fmt: skip
        lse_c = tl.load(lse_ptr + cols, mask=col_mask, other=0.0)
        logits = tl.where(valid, cosine / tau, 0.0)
        row_probs = tl.exp(logits - lse[:, None])
        probs = row_probs + tl.exp(logits - lse_c[None, :])
        weight = tl.where(valid, probs * scale, 0.0)
        row_tau += tl.sum(tl.where(valid, row_probs * scale, 0.0) * cosine, axis=1)
        omega = weight / (norm_v[:, None] * norm_c[None, :])
        diagonal += tl.sum(weight * cosine, axis=1)
        omega_sum += tl.sum(omega, axis=1)
        scaled = omega / sigma_c[None, :]
        yy_t = tl.load(
            yy_ptr + cols[None, :] * stride_yb + rows[:, None] * stride_yj, mask=mask, other=0.0
        )
        omega_gram += tl.sum(scaled * yy_t, axis=1)
        if STORE_OMEGA:
            tl.store(omega_ptr + rows[:, None] * B + cols[None, :], scaled, mask=mask)
    omega_diagonal = -diagonal / (norm_v * norm_v)
    yy_diagonal = tl.load(yy_ptr + rows * stride_yb + rows * stride_yj, mask=row_mask, other=0.0)
    tl.store(coef_ptr + rows, d_positive / (norm_u * norm_v), mask=row_mask)
    tl.store(coef_ptr + B + rows, -d_positive * positive / (norm_u * norm_u), mask=row_mask)
    tl.store(coef_ptr + 2 * B + rows, omega_diagonal, mask=row_mask)
    tl.store(coef_ptr + 3 * B + rows, omega_sum + omega_diagonal, mask=row_mask)
    omega_gram += omega_diagonal / sigma_aug * yy_diagonal
    tl.store(coef_ptr + 4 * B + rows, omega_gram, mask=row_mask)
    tl.store(coef_ptr + 5 * B + rows, row_tau, mask=row_mask)
