"""Triton kernels shared by gradcam and class_activation_map (docs/design.md#24-gradcam, §2.5).

raw_b = Σ_k w_bk·A_bk (or Σ_k G_bk ⊙ A_bk) fused over K, and its transpose (the chain rule
back to A, G and the weights), each on [BLOCK_K, BLOCK_HW] tiles of one map.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._dispatch import interpreter_enabled
from .._spec import MAP_EPS

_MAP_EPS = tl.constexpr(MAP_EPS)


def map_tiles(k: int, hw: int) -> dict[str, int]:
    """BLOCK_K × BLOCK_HW tiles of [K, H·W] maps: about 4096 elements per program on GPUs."""
    block_hw = triton.next_power_of_2(max(hw, 1))
    if interpreter_enabled():
        return {"BLOCK_K": 4, "BLOCK_HW": min(block_hw, 16), "num_warps": 1}
    block_hw = min(block_hw, 1024)
    block_k = max(1, min(4096 // block_hw, triton.next_power_of_2(max(k, 1))))
    return {"BLOCK_K": block_k, "BLOCK_HW": block_hw, "num_warps": 8}


def k_split(batch: int, k: int, hw: int, tiles: dict[str, int]) -> tuple[int, int]:
    """(S, K_CHUNK): how many programs share the channels of one pixel tile.

    GPUs: enough programs for about 512 in all (4 per SM of an H100) when the maps are small
    (7×7 maps of 2048 channels); the interpreter splits whenever K spans several BLOCK_K chunks,
    so that the atomic path is tested.
    """
    chunks = triton.cdiv(max(k, 1), tiles["BLOCK_K"])
    programs = batch * triton.cdiv(hw, tiles["BLOCK_HW"])
    split = min(chunks, 2 if interpreter_enabled() else max(1, 512 // max(programs, 1)))
    return split, triton.cdiv(chunks, split) * tiles["BLOCK_K"]


@triton.jit
def map_eps(FP64: tl.constexpr):
    """ε = MAP_EPS of the map normalisations, rounded to the compute dtype as torch rounds it."""
    return tl.full([], _MAP_EPS, tl.float64 if FP64 else tl.float32)


@triton.jit
def minmax_normalized(x, lo, hi, FP64: tl.constexpr):
    """(x − lo) / ((hi − lo) + ε) for a map with minimum lo and maximum hi (math.h's twin)."""
    return (x - lo) / ((hi - lo) + map_eps(FP64))


def pixel_tiles() -> dict[str, int]:
    """1-D tiles over the pixels of a resized map."""
    if interpreter_enabled():
        return {"BLOCK": 32, "num_warps": 1}
    return {"BLOCK": 1024, "num_warps": 4}


@triton.jit
def map_offsets(b, ks, ps, W, stride_b, stride_k, stride_h, stride_w):
    """Offsets of the [BLOCK_K, BLOCK_HW] tile (channels ks, flat pixels ps) of map b."""
    pix = (ps // W) * stride_h + (ps % W) * stride_w
    return b * stride_b + ks[:, None] * stride_k + pix[None, :]


@triton.jit
def weighted_sum_kernel(
    a_ptr,
    g_ptr,
    wt_ptr,
    t_ptr,
    out_ptr,
    K,
    K_CHUNK,
    HW,
    W,
    DIVISOR,
    stride_ab,
    stride_ak,
    stride_ah,
    stride_aw,
    stride_gb,
    stride_gk,
    stride_gh,
    stride_gw,
    stride_wr,
    stride_wk,
    ELEMENTWISE: tl.constexpr,
    GATHER: tl.constexpr,
    SPLIT: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # out_b = (Σ_k w_rk·A_bk) / DIVISOR with r = t_b if GATHER else b (weights [R, K]), or
    # out_b = Σ_k G_bk ⊙ A_bk if ELEMENTWISE; out is [B, H·W] contiguous.
    # Grid: (B, cdiv(H·W, BLOCK_HW), S): one pixel tile of one map and the channels
    # [s·K_CHUNK, (s+1)·K_CHUNK) per program, streamed in BLOCK_K chunks; SPLIT (S > 1, small
    # maps with many channels): the S partial sums are added atomically into a zeroed out in the
    # accumulation dtype. Accumulation: fp32 (fp64 for fp64 inputs).
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1).to(tl.int64) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    p_mask = ps < HW
    row = b
    if GATHER:
        row = tl.load(t_ptr + b).to(tl.int64)
    k_start = tl.program_id(2).to(tl.int64) * K_CHUNK
    acc = tl.zeros([BLOCK_K, BLOCK_HW], dtype=dtype)
    for k0 in range(k_start, tl.minimum(k_start + K_CHUNK, K), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = (ks < K)[:, None] & p_mask[None, :]
        a_off = map_offsets(b, ks, ps, W, stride_ab, stride_ak, stride_ah, stride_aw)
        a = tl.load(a_ptr + a_off, mask=mask, other=0.0).to(dtype)
        if ELEMENTWISE:
            g_off = map_offsets(b, ks, ps, W, stride_gb, stride_gk, stride_gh, stride_gw)
            acc += tl.load(g_ptr + g_off, mask=mask, other=0.0).to(dtype) * a
        else:
            w_off = row * stride_wr + ks * stride_wk
            wk = tl.load(wt_ptr + w_off, mask=ks < K, other=0.0).to(dtype)
            acc += wk[:, None] * a
    out = tl.sum(acc, axis=0) / DIVISOR
    if SPLIT:
        tl.atomic_add(out_ptr + b * HW + ps, out, mask=p_mask)
    else:
        tl.store(out_ptr + b * HW + ps, out.to(out_ptr.dtype.element_ty), mask=p_mask)


@triton.jit
def weighted_sum_bwd_kernel(
    a_ptr,
    g_ptr,
    wt_ptr,
    t_ptr,
    raw_ptr,
    d_ptr,
    da_ptr,
    dg_ptr,
    dw_ptr,
    K,
    HW,
    W,
    DIVISOR,
    stride_ab,
    stride_ak,
    stride_ah,
    stride_aw,
    stride_gb,
    stride_gk,
    stride_gh,
    stride_gw,
    stride_wr,
    stride_wk,
    stride_db,
    stride_dh,
    stride_dw,
    ELEMENTWISE: tl.constexpr,
    GATHER: tl.constexpr,
    RELU: tl.constexpr,
    MEAN_G: tl.constexpr,
    GRAD_A: tl.constexpr,
    GRAD_W: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # dRaw_b = d_b / DIVISOR, zeroed where raw_b ≤ 0 if RELU (raw: [B, H·W] contiguous).
    # ELEMENTWISE: dA = G ⊙ dRaw, dG = A ⊙ dRaw. Otherwise dA_bk = w_rk·dRaw_b and
    # s_bk = Σ_hw dRaw_b ⊙ A_bk; MEAN_G (Grad-CAM, w = α = mean_hw G): dG_bk = s_bk/(H·W), one
    # value per channel (dg: [B, K] contiguous, expanded over H×W by the caller); GATHER (CAM,
    # r = t_b): dW[t_b, k] += s_bk atomically (dw: [C, K] contiguous). dA (and dG when
    # ELEMENTWISE): [B, K, H·W] contiguous. GRAD_A: dA is computed; GRAD_W: dG (or dW) is; the
    # loads only the other one needs (W for dA, A for dG/dW; G for dA when ELEMENTWISE) are not
    # made. Grid: (B, cdiv(K, BLOCK_K)): a block of channels of one map per program, streaming
    # H·W in BLOCK_HW chunks. Accumulation: fp32 (fp64 for fp64 inputs).
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    row = b
    if GATHER:
        row = tl.load(t_ptr + b).to(tl.int64)
    wk = tl.zeros([BLOCK_K], dtype=dtype)
    if GRAD_A and not ELEMENTWISE:
        wk = tl.load(wt_ptr + row * stride_wr + ks * stride_wk, mask=k_mask, other=0.0).to(dtype)
    s = tl.zeros([BLOCK_K, BLOCK_HW], dtype=dtype)
    for p0 in range(0, HW, BLOCK_HW):
        ps = p0 + tl.arange(0, BLOCK_HW).to(tl.int64)
        p_mask = ps < HW
        mask = k_mask[:, None] & p_mask[None, :]
        d_off = b * stride_db + (ps // W) * stride_dh + (ps % W) * stride_dw
        d_raw = tl.load(d_ptr + d_off, mask=p_mask, other=0.0).to(dtype) / DIVISOR
        if RELU:
            raw = tl.load(raw_ptr + b * HW + ps, mask=p_mask, other=0.0)
            d_raw = tl.where(raw > 0.0, d_raw, 0.0)
        out_off = (b * K + ks)[:, None] * HW + ps[None, :]
        if GRAD_A:
            if ELEMENTWISE:
                g_off = map_offsets(b, ks, ps, W, stride_gb, stride_gk, stride_gh, stride_gw)
                da = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(dtype) * d_raw[None, :]
            else:
                da = wk[:, None] * d_raw[None, :]
            tl.store(da_ptr + out_off, da.to(da_ptr.dtype.element_ty), mask=mask)
        if GRAD_W:
            a_off = map_offsets(b, ks, ps, W, stride_ab, stride_ak, stride_ah, stride_aw)
            a = tl.load(a_ptr + a_off, mask=mask, other=0.0).to(dtype)
            if ELEMENTWISE:
                dg = a * d_raw[None, :]
                tl.store(dg_ptr + out_off, dg.to(dg_ptr.dtype.element_ty), mask=mask)
            else:
                s += a * d_raw[None, :]
    if GRAD_W and MEAN_G:
        dg = tl.sum(s, axis=1) / HW
        tl.store(dg_ptr + b * K + ks, dg.to(dg_ptr.dtype.element_ty), mask=k_mask)
    if GRAD_W and GATHER:
        tl.atomic_add(dw_ptr + row * K + ks, tl.sum(s, axis=1), mask=k_mask)
