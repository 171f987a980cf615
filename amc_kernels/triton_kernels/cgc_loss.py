"""Triton cgc_loss (DESIGN §2.6): the CGC loss exactly, on the native h×w maps.

No size×size map exists, forward or backward. R_h (size×h) and R_w (size×w) are the bilinear
resizes to size (align_corners=False, torch's taps), r = Rᵀ1 and K = RᵀR per axis. Sample b's crop
(i, j, ch, cw) and flip give A_b = Resize_{ch→size}·Select_{i..i+ch}·R_h (size×h) and
B_b = Flip·Resize_{cw→size}·Select_{j..j+cw}·R_w (size×w), built with tensor index arithmetic
(O(B·size·(h + w)), no loop over crops, no host sync). With ε = 1e-8, X_b = A_b c_b B_bᵀ and
Y_b = R_h c'_b R_wᵀ: u_b = X_b/σ_b + ε, v_b = Y_b/σ'_b + ε, σ = Σup(c) + ε, σ' = ΣY + ε, and
  ⟨X, X⟩ = ⟨c, (AᵀA) c (BᵀB)⟩, ⟨X, Y⟩ = ⟨c, (AᵀR_h) c' (R_wᵀB)⟩, ⟨Y_b, Y_j⟩ = ⟨c'_b, K_h c'_j K_w⟩.
Kernels: the per-axis products AᵀA, AᵀR (batched matmul kernel), the per-sample sandwiches and
bilinear forms (sandwich kernel), the B×B Gram ⟨c'_b, Z_j⟩ (matmul kernel), the logits with an
online log-sum-exp (CE kernel). The backward recomputes all statistics, turns the softmax into
the cosine chain-rule coefficients (CE backward kernel: dL/du_b = α_b v_b + β_b u_b,
dL/dv_b = α_b u_b + Σ_j Ω_bj v_j), and pulls them back through the affine maps with three more
sandwiches and Ω·Z (matmul kernel); the O(B·h·w) combination is elementwise torch.
Memory: O(B·size·(h + w)) for the crop matrices, O(B·h·w) maps, O(B²) for the Gram and Ω
(DESIGN §2.6 allows B², as the C++ kernels use). No atomics: every output has one writer.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._common import interpreter_enabled, register_triton
from ._tiles import MMA_FP64, MMA_IEEE, compute_dtype, forbid_double_backward, launch, mma

OP = "cgc_loss"
MAP_EPS = 1e-8  # the ε of s(c) = up(c) / (Σup(c) + ε) + ε
_EPS = tl.constexpr(MAP_EPS)

# ---- kernels -----------------------------------------------------------------------------------


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
def negative_cosines(
    yy_ptr,
    rows,
    cols,
    mask,
    stride_yb,
    stride_yj,
    sum_y_r,
    sigma_r,
    norm_r,
    sum_y_c,
    sigma_c,
    norm_c,
    count,
):
    """cos(v_r, v_c) [R, C] from the Gram tile ⟨Y_r, Y_c⟩."""
    yy = tl.load(
        yy_ptr + rows[:, None] * stride_yb + cols[None, :] * stride_yj, mask=mask, other=0.0
    )
    inner = map_inner(
        yy, sum_y_r[:, None], sum_y_c[None, :], sigma_r[:, None], sigma_c[None, :], count
    )
    return inner / (norm_r[:, None] * norm_c[None, :])


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
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    dtype = tl.float64 if FP64 else tl.float32
    count = (tl.zeros([], dtype) + SIZE) * SIZE  # SIZE may arrive as constexpr 1
    tau = tl.load(tau_ptr)
    sum_y, sigma_aug, norm_v = aug_stats(
        stats_ptr, yy_ptr, rows, row_mask, B, stride_yb, stride_yj, count
    )
    _, _, positive = orig_stats(stats_ptr, rows, row_mask, B, sum_y, sigma_aug, norm_v, count)
    first = positive / tau
    running_max = first
    total = tl.full([BLOCK_B], 1.0, dtype)
    for j0 in range(0, B, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        col_mask = cols < B
        sum_y_c, sigma_c, norm_c = aug_stats(
            stats_ptr, yy_ptr, cols, col_mask, B, stride_yb, stride_yj, count
        )
        mask = row_mask[:, None] & col_mask[None, :]
        cosine = negative_cosines(
            yy_ptr,
            rows,
            cols,
            mask,
            stride_yb,
            stride_yj,
            sum_y,
            sigma_aug,
            norm_v,
            sum_y_c,
            sigma_c,
            norm_c,
            count,
        )
        valid = mask & (rows[:, None] != cols[None, :])
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
    FP64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # With s = grad/(B·τ), p the softmax of each row: d_pos_b = (p_b0 − 1)·s, w_bj = (p_bj + p_jb)·s
    # (j ≠ b; cos(v_b, v_j) enters rows b and j): α_b = d_pos/(‖u‖‖v‖), β_b = −d_pos·cos_b/‖u‖²,
    # Ω_bj = w_bj/(‖v_b‖‖v_j‖), Ω_bb = −(d_pos·cos_b + Σ_j w_bj cos_bj)/‖v_b‖². Stores Ω_bj/σ'_j
    # off the diagonal (0 on it) into omega [B, B] and coef [5, B] = α, β, Ω_bb, Σ_j Ω_bj,
    # Σ_j Ω_bj ⟨Y_j, Y_b⟩/σ'_j. Grid: (cdiv(B, BLOCK_B),): a block of rows per program,
    # streaming BLOCK_J columns. Accumulation: fp32 (fp64 for fp64 maps).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    dtype = tl.float64 if FP64 else tl.float32
    count = (tl.zeros([], dtype) + SIZE) * SIZE  # SIZE may arrive as constexpr 1
    tau = tl.load(tau_ptr)
    scale = tl.load(scale_ptr)
    sum_y, sigma_aug, norm_v = aug_stats(
        stats_ptr, yy_ptr, rows, row_mask, B, stride_yb, stride_yj, count
    )
    _, norm_u, positive = orig_stats(stats_ptr, rows, row_mask, B, sum_y, sigma_aug, norm_v, count)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    d_positive = (tl.exp(positive / tau - lse) - 1.0) * scale
    diagonal = d_positive * positive
    omega_sum = tl.zeros([BLOCK_B], dtype)
    omega_gram = tl.zeros([BLOCK_B], dtype)
    for j0 in range(0, B, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        col_mask = cols < B
        sum_y_c, sigma_c, norm_c = aug_stats(
            stats_ptr, yy_ptr, cols, col_mask, B, stride_yb, stride_yj, count
        )
        lse_c = tl.load(lse_ptr + cols, mask=col_mask, other=0.0)
        mask = row_mask[:, None] & col_mask[None, :]
        cosine = negative_cosines(
            yy_ptr,
            rows,
            cols,
            mask,
            stride_yb,
            stride_yj,
            sum_y,
            sigma_aug,
            norm_v,
            sum_y_c,
            sigma_c,
            norm_c,
            count,
        )
        valid = mask & (rows[:, None] != cols[None, :])
        logits = tl.where(valid, cosine / tau, 0.0)
        probs = tl.exp(logits - lse[:, None]) + tl.exp(logits - lse_c[None, :])
        weight = tl.where(valid, probs * scale, 0.0)
        omega = weight / (norm_v[:, None] * norm_c[None, :])
        diagonal += tl.sum(weight * cosine, axis=1)
        omega_sum += tl.sum(omega, axis=1)
        scaled = omega / sigma_c[None, :]
        yy_t = tl.load(
            yy_ptr + cols[None, :] * stride_yb + rows[:, None] * stride_yj, mask=mask, other=0.0
        )
        omega_gram += tl.sum(scaled * yy_t, axis=1)
        tl.store(omega_ptr + rows[:, None] * B + cols[None, :], scaled, mask=mask)
    omega_diagonal = -diagonal / (norm_v * norm_v)
    yy_diagonal = tl.load(yy_ptr + rows * stride_yb + rows * stride_yj, mask=row_mask, other=0.0)
    tl.store(coef_ptr + rows, d_positive / (norm_u * norm_v), mask=row_mask)
    tl.store(coef_ptr + B + rows, -d_positive * positive / (norm_u * norm_u), mask=row_mask)
    tl.store(coef_ptr + 2 * B + rows, omega_diagonal, mask=row_mask)
    tl.store(coef_ptr + 3 * B + rows, omega_sum + omega_diagonal, mask=row_mask)
    omega_gram += omega_diagonal / sigma_aug * yy_diagonal
    tl.store(coef_ptr + 4 * B + rows, omega_gram, mask=row_mask)


# ---- launchers -----------------------------------------------------------------------------------


def _kind(dtype: torch.dtype) -> int:
    return MMA_FP64.value if dtype == torch.float64 else MMA_IEEE.value


def _matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b in dtype for a [G, M, K] and b [G, K, N] (either may have G = 1 with stride 0)."""
    groups = max(a.shape[0], b.shape[0])
    (m, k), n = a.shape[1:], b.shape[2]
    out = torch.empty((groups, m, n), dtype=dtype, device=a.device)
    if interpreter_enabled():
        block, warps, stages = (16, 16, 16), 1, 1
    elif dtype == torch.float64:
        block, warps, stages = (16, 16, 16), 4, 1
    else:
        block, warps, stages = (32, 32, 32), 4, 2
    grid = (triton.cdiv(m, block[0]), triton.cdiv(n, block[1]), groups)
    launch(
        cgc_matmul_kernel,
        grid,
        a,
        b,
        out,
        m,
        n,
        k,
        a.stride(0) if a.shape[0] > 1 else 0,
        a.stride(1),
        a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0,
        b.stride(1),
        b.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        KIND=_kind(dtype),
        BLOCK_M=block[0],
        BLOCK_N=block[1],
        BLOCK_K=block[2],
        num_warps=warps,
        num_stages=stages,
    )
    return out


def _taps(
    dst: torch.Tensor, in_size: torch.Tensor, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, w0, w1) of torch's bilinear taps (align_corners=False) from in_size to size."""
    scale = in_size.to(dtype) / size
    src = (scale * (dst.to(dtype) + 0.5) - 0.5).clamp_min(0)
    i0 = torch.minimum(src.floor().long(), in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.to(dtype)).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def _resize_matrix(n: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """R [size, n]: the bilinear resize n → size."""
    dst = torch.arange(size, device=device)
    i0, i1, w0, w1 = _taps(dst, torch.full_like(dst, n), size, dtype)
    cols = torch.arange(n, device=device)
    return w0[:, None] * (i0[:, None] == cols).to(dtype) + w1[:, None] * (i1[:, None] == cols).to(
        dtype
    )


def _crop_matrices(
    resize: torch.Tensor, start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None
) -> torch.Tensor:
    """[B, size, n]: Resize_{len→size}·Select_{start..start+len}·R, rows reversed where flipped."""
    size = resize.shape[0]
    dst = torch.arange(size, device=resize.device).expand(start.shape[0], size)
    if flip is not None:
        dst = torch.where(flip[:, None], size - 1 - dst, dst)
    i0, i1, w0, w1 = _taps(dst, length[:, None], size, resize.dtype)
    start = start[:, None]
    return w0[..., None] * resize[start + i0] + w1[..., None] * resize[start + i1]


class _Axes:
    """The per-axis matrices of one batch: K, r of the frame and AᵀA, AᵀR, Aᵀ1 of each crop."""

    def __init__(self, n: int, size: int, start, length, flip, dtype, device) -> None:
        resize = _resize_matrix(n, size, dtype, device)
        crop = _crop_matrices(resize, start, length, flip)
        crop_t = crop.transpose(1, 2)
        self.gram = _matmul(resize.T[None], resize[None], dtype)[0]  # K = RᵀR
        self.sums = resize.sum(0)  # r = Rᵀ1
        self.crop_gram = _matmul(crop_t, crop, dtype)  # AᵀA
        self.crop_cross = _matmul(crop_t, resize[None], dtype)  # AᵀR
        self.crop_sums = crop.sum(1)  # Aᵀ1


def _sandwich(
    m: torch.Tensor,
    n: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    lv: torch.Tensor,
    rv: torch.Tensor,
    dtype: torch.dtype,
    store: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(L M R per sample or None, ⟨N, L M R⟩ [B], l_bᵀ N r_b [B]); 2-D L, R, l, r broadcast."""
    batch, h, w = m.shape
    out = torch.empty((batch, h, w), dtype=dtype, device=m.device) if store else None
    dot = torch.empty(batch, dtype=dtype, device=m.device)
    form = torch.empty(batch, dtype=dtype, device=m.device)

    def batch_stride(t: torch.Tensor, dims: int) -> int:
        return t.stride(0) if t.dim() == dims + 1 else 0

    block_h = max(16, triton.next_power_of_2(h))
    block_w = max(16, triton.next_power_of_2(w))
    warps = 1 if interpreter_enabled() else (8 if block_h * block_w >= 64 * 64 else 4)
    launch(
        cgc_sandwich_kernel,
        (batch,),
        m,
        n,
        left,
        right,
        lv,
        rv,
        dot if out is None else out,
        dot,
        form,
        h,
        w,
        *m.stride(),
        *n.stride(),
        batch_stride(left, 2),
        left.stride(-2),
        left.stride(-1),
        batch_stride(right, 2),
        right.stride(-2),
        right.stride(-1),
        batch_stride(lv, 1),
        batch_stride(rv, 1),
        STORE=store,
        FP64=dtype == torch.float64,
        KIND=_kind(dtype),
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        num_warps=warps,
        num_stages=1,
    )
    return out, dot, form


class _Problem:
    """Axis matrices, statistics [5, B] (⟨X,X⟩, ⟨X,Y⟩, ΣX, Σup(c), ΣY), Gram ⟨Y_b, Y_j⟩ and
    Z_b = K_h c'_b K_w of one call; STORE keeps the sandwiches the backward pulls back through."""

    def __init__(self, cam_orig, cam_aug, crops, flips, size: int, store: bool) -> None:
        batch, h, w = cam_orig.shape
        self.dtype = dtype = compute_dtype(cam_orig.dtype)
        self.size = size
        crops = crops.long()
        device = cam_orig.device
        self.rows = rows = _Axes(h, size, crops[:, 0], crops[:, 2], None, dtype, device)
        self.cols = cols = _Axes(w, size, crops[:, 1], crops[:, 3], flips.bool(), dtype, device)
        self.stats = torch.empty((5, batch), dtype=dtype, device=device)
        # (AᵀA) c (BᵀB): ⟨c, ·⟩ = ⟨X, X⟩, Aᵀ1ᵀ c Bᵀ1 = ΣX.
        self.self_term, self.stats[0], self.stats[2] = _sandwich(
            cam_orig,
            cam_orig,
            rows.crop_gram,
            cols.crop_gram,
            rows.crop_sums,
            cols.crop_sums,
            dtype,
            store,
        )
        # (AᵀR_h) c' (R_wᵀB): ⟨c, ·⟩ = ⟨X, Y⟩; r_hᵀ c r_w = Σup(c).
        self.cross_term, self.stats[1], self.stats[3] = _sandwich(
            cam_aug,
            cam_orig,
            rows.crop_cross,
            cols.crop_cross.transpose(1, 2),
            rows.sums,
            cols.sums,
            dtype,
            store,
        )
        # Z = K_h c' K_w; r_hᵀ c' r_w = ΣY.
        self.z, _, self.stats[4] = _sandwich(
            cam_aug, cam_aug, rows.gram, cols.gram, rows.sums, cols.sums, dtype, True
        )
        flat_aug = cam_aug.reshape(1, batch, h * w)
        self.yy = _matmul(flat_aug, self.z.view(1, batch, h * w).transpose(1, 2), dtype)[0]

    def cross_entropy(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse [B], loss_b [B]) of the B rows of logits."""
        batch = self.yy.shape[0]
        lse = torch.empty(batch, dtype=self.dtype, device=self.yy.device)
        loss = torch.empty_like(lse)
        block = 16 if interpreter_enabled() else (32 if self.dtype == torch.float64 else 64)
        launch(
            cgc_ce_fwd_kernel,
            (triton.cdiv(batch, block),),
            self.stats,
            self.yy,
            self.tau(temperature),
            lse,
            loss,
            batch,
            self.size,
            self.yy.stride(0),
            self.yy.stride(1),
            FP64=self.dtype == torch.float64,
            BLOCK_B=block,
            BLOCK_J=block,
            num_warps=4,
        )
        return lse, loss

    def tau(self, temperature: float) -> torch.Tensor:
        """τ as a one-element tensor: a float argument would reach the kernel as fp32."""
        return torch.full((1,), temperature, dtype=self.dtype, device=self.yy.device)


def _empty_loss(cam_orig: torch.Tensor) -> torch.Tensor:
    return cam_orig.new_zeros((), dtype=compute_dtype(cam_orig.dtype))


@torch.library.triton_op("amc_kernels::cgc_loss_triton_fwd", mutates_args=())
def cgc_loss_fwd(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> torch.Tensor:
    """The loss, a scalar in fp32 (fp64 for fp64 maps)."""
    batch = cam_orig.shape[0]
    if batch == 0:
        return _empty_loss(cam_orig)
    problem = _Problem(cam_orig, cam_aug, crops, flips, size, store=False)
    _, loss = problem.cross_entropy(temperature)
    return loss.sum() / batch


def _coefficients(
    problem: _Problem, grad: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ω_bj/σ'_j off the diagonal [B, B], coef [5, B]) of cgc_ce_bwd_kernel."""
    batch = problem.yy.shape[0]
    lse, _ = problem.cross_entropy(temperature)
    scale = grad.reshape(1).to(problem.dtype) / (batch * temperature)
    omega = torch.zeros((batch, batch), dtype=problem.dtype, device=lse.device)
    coef = torch.empty((5, batch), dtype=problem.dtype, device=lse.device)
    block = 16 if interpreter_enabled() else (32 if problem.dtype == torch.float64 else 64)
    launch(
        cgc_ce_bwd_kernel,
        (triton.cdiv(batch, block),),
        problem.stats,
        problem.yy,
        problem.tau(temperature),
        scale,
        lse,
        omega,
        coef,
        batch,
        problem.size,
        problem.yy.stride(0),
        problem.yy.stride(1),
        FP64=problem.dtype == torch.float64,
        BLOCK_B=block,
        BLOCK_J=block,
        num_warps=8,
    )
    return omega, coef


@torch.library.triton_op("amc_kernels::cgc_loss_triton_bwd", mutates_args=())
def cgc_loss_bwd(
    grad: torch.Tensor,
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂cam_orig, ∂L/∂cam_aug) in the maps' dtype."""
    batch, h, w = cam_orig.shape
    if batch == 0:
        return torch.zeros_like(cam_orig), torch.zeros_like(cam_aug)
    p = _Problem(cam_orig, cam_aug, crops, flips, size, store=True)
    omega, (alpha, beta, omega_bb, omega_sum, omega_gram) = _coefficients(p, grad, temperature)
    rows, cols = p.rows, p.cols
    # R_hᵀ X R_w = (R_hᵀA) c (BᵀR_w).
    back_term, _, _ = _sandwich(
        cam_orig,
        cam_orig,
        rows.crop_cross.transpose(1, 2),
        cols.crop_cross,
        rows.sums,
        cols.sums,
        p.dtype,
        True,
    )
    flat_z = p.z.view(1, batch, h * w)
    mixed = _matmul(omega[None], flat_z, p.dtype)[0].view(batch, h, w)  # Σ_{j≠b} Ω_bj Z_j/σ'_j
    xx, xy, sum_x, up_sum, sum_y = p.stats
    sigma, sigma_aug = up_sum + MAP_EPS, sum_y + MAP_EPS
    # dL/dc = Aᵀ(αv + βu)B/σ − ⟨αv + βu, X⟩/σ²·r_h r_wᵀ.
    u_dot_x = alpha * (xy / sigma_aug + MAP_EPS * sum_x) + beta * (xx / sigma + MAP_EPS * sum_x)
    crop_coef = (alpha + beta) * MAP_EPS / sigma
    frame_coef = -u_dot_x / (sigma * sigma)
    # dL/dc' = R_hᵀ(αu + Σ_j Ω_bj v_j)R_w/σ' − ⟨αu + Σ_j Ω_bj v_j, Y_b⟩/σ'²·r_h r_wᵀ.
    v_dot_y = alpha * (xy / sigma + MAP_EPS * sum_y) + omega_gram + omega_sum * MAP_EPS * sum_y
    aug_coef = MAP_EPS * (alpha + omega_sum) / sigma_aug - v_dot_y / (sigma_aug * sigma_aug)

    def outer(coef: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return coef[:, None, None] * left[..., :, None] * right[..., None, :]

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return x[:, None, None]

    grad_orig = (
        per_sample(alpha / sigma_aug) * p.cross_term + per_sample(beta / sigma) * p.self_term
    ) / per_sample(sigma)
    grad_orig = grad_orig + outer(crop_coef, rows.crop_sums, cols.crop_sums)
    grad_orig = grad_orig + outer(frame_coef, rows.sums, cols.sums)
    grad_aug = (
        per_sample(alpha / sigma) * back_term + mixed + per_sample(omega_bb / sigma_aug) * p.z
    ) / per_sample(sigma_aug)
    grad_aug = grad_aug + outer(aug_coef, rows.sums, cols.sums)
    return grad_orig.to(cam_orig.dtype), grad_aug.to(cam_aug.dtype)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    cam_orig, cam_aug, crops, flips, temperature, size = inputs
    ctx.options = (temperature, size)
    ctx.save_for_backward(cam_orig, cam_aug, crops, flips)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    cam_orig, cam_aug, crops, flips = ctx.saved_tensors
    grad_orig, grad_aug = cgc_loss_bwd(grad, cam_orig, cam_aug, crops, flips, *ctx.options)
    return grad_orig, grad_aug, None, None, None, None


cgc_loss_fwd.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(OP, cgc_loss_bwd)


def cgc_loss(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    *,
    temperature: float = 0.5,
    size: int = 224,
) -> torch.Tensor:
    """The reference's signature on the Triton kernels (inputs validated by the caller)."""
    return cgc_loss_fwd(cam_orig, cam_aug, crops, flips, float(temperature), int(size))


register_triton(OP, cgc_loss)
