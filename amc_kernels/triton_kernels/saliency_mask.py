"""Triton saliency_mask (docs/design.md#27-saliency_mask): ExCon's masked view, not differentiable.

e = (s − min)/((max − min) + MAP_EPS) with s the saliency resized bilinearly to the images' H×W,
recomputed from the small [h, w] map wherever it is needed (never stored).
select_kernel (one program per image): min and max of s; with top_fraction, the k-th largest e
by a bitwise binary search on its bit pattern (e ≥ 0, so the pattern as an integer is monotonic
in e): from the sign bit down, keep bit j set when at least k pixels have a key ≥ the candidate;
the result is the key v of the k-th largest pixel, found with counts only (no sort, no host
synchronisation, fixed shapes). A last pass counts the pixels above v and, per tile, the ties
at v. mask_kernel (one pixel tile per program) keeps e > threshold, or e > v plus the first
k − #{e > v} ties at v in flat order (the reference's stable descending sort), and writes the
keep mask and every channel of the masked images.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreter_enabled
from .._register import forward_function
from .._spec import SALIENCY_MASK, compute_dtype
from ..reference.saliency_mask import kept_pixel_count
from ._common import launch, scalar, triton_op
from ._interp import bilinear_sample
from ._maps import minmax_normalized


@triton.jit
def saliency_keys(
    s_ptr, ps, mask, lo, hi, h, w, H, W, stride_h, stride_w, FP64: tl.constexpr
):  # fmt: skip
    """(e, key) of flat pixels ps: e min-max normalised, key its bit pattern (−1 off the mask)."""
    s = bilinear_sample(s_ptr, ps // W, ps % W, mask, h, w, H, W, stride_h, stride_w, False, FP64)
    e = minmax_normalized(s, lo, hi, FP64)
    key = e.to(tl.int64, bitcast=True) if FP64 else e.to(tl.int32, bitcast=True).to(tl.int64)
    return e, tl.where(mask, key, -1)


@triton.jit
def select_kernel(
    s_ptr, stats_ptr, sel_ptr, counts_ptr, h, w, H, W, T, KEEP,
    stride_sb, stride_sh, stride_sw,
    TOP: tl.constexpr, FP64: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # stats[b] = (min s, max s) over the resized map s_b (H×W); with TOP: sel[b] = (v, k − #{key
    # > v}) where v is the key of the KEEP-th largest e (bitwise binary search over the BITS key
    # bits below the zero sign bit, one pass over the pixels per bit), counts[b, t] = #{key = v}
    # in pixel tile t.
    # Grid: (B,): one image per program, BLOCK pixels at a time. Accumulation: fp32 (fp64 for
    # fp64 saliency); counts in int64.
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    src = s_ptr + b * stride_sb
    hi = tl.full([BLOCK], -float("inf"), dtype)
    lo = tl.full([BLOCK], float("inf"), dtype)
    for p0 in range(0, H * W, BLOCK):
        ps = p0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = ps < H * W
        s = bilinear_sample(
            src, ps // W, ps % W, mask, h, w, H, W, stride_sh, stride_sw, False, FP64
        )
        hi = tl.maximum(hi, tl.where(mask, s, -float("inf")))
        lo = tl.minimum(lo, tl.where(mask, s, float("inf")))
    hi_all = tl.max(hi, axis=0)
    lo_all = tl.min(lo, axis=0)
    tl.store(stats_ptr + b * 2, lo_all)
    tl.store(stats_ptr + b * 2 + 1, hi_all)
    if TOP:
        prefix = tl.full([], 0, tl.int64)
        for i in range(BITS):
            candidate = prefix | (tl.full([], 1, tl.int64) << (BITS - 1 - i))
            count = tl.full([], 0, tl.int64)
            for p0 in range(0, H * W, BLOCK):
                ps = p0 + tl.arange(0, BLOCK).to(tl.int64)
                _, key = saliency_keys(
                    src, ps, ps < H * W, lo_all, hi_all, h, w, H, W, stride_sh, stride_sw, FP64
                )
                count += tl.sum((key >= candidate).to(tl.int64), axis=0)
            prefix = tl.where(count >= KEEP, candidate, prefix)
        above = tl.full([], 0, tl.int64)
        for p0 in range(0, H * W, BLOCK):
            ps = p0 + tl.arange(0, BLOCK).to(tl.int64)
            _, key = saliency_keys(
                src, ps, ps < H * W, lo_all, hi_all, h, w, H, W, stride_sh, stride_sw, FP64
            )
            above += tl.sum((key > prefix).to(tl.int64), axis=0)
            tl.store(counts_ptr + b * T + p0 // BLOCK, tl.sum((key == prefix).to(tl.int64), axis=0))
        tl.store(sel_ptr + b * 2, prefix)
        tl.store(sel_ptr + b * 2 + 1, KEEP - above)


@triton.jit
def mask_kernel(
    img_ptr, s_ptr, stats_ptr, sel_ptr, counts_ptr, thr_ptr, fill_ptr, out_ptr, keep_ptr,
    C, h, w, H, W, T,
    stride_ib, stride_ic, stride_ih, stride_iw, stride_sb, stride_sh, stride_sw,
    TOP: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # keep = e > threshold, or with TOP: key > v, or key = v among the first `need` ties in flat
    # order (rank = ties in earlier tiles, from counts, + the exclusive cumsum in this tile);
    # out[b, c] = where(keep, images[b, c], fill) for every channel c (out, keep contiguous).
    # Grid: (B, T = cdiv(H·W, BLOCK)): one pixel tile of one image per program.
    # Accumulation: fp32 (fp64 for fp64 saliency); ranks in int64.
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64)
    ps = t * BLOCK + tl.arange(0, BLOCK)
    mask = ps < H * W
    lo = tl.load(stats_ptr + b * 2)
    hi = tl.load(stats_ptr + b * 2 + 1)
    e, key = saliency_keys(
        s_ptr + b * stride_sb, ps, mask, lo, hi, h, w, H, W, stride_sh, stride_sw, FP64
    )
    if TOP:
        v = tl.load(sel_ptr + b * 2)
        need = tl.load(sel_ptr + b * 2 + 1)
        before = tl.zeros([BLOCK_T], tl.int64)
        for t0 in range(0, t, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            before += tl.load(counts_ptr + b * T + ts, mask=ts < t, other=0)
        tie = (key == v).to(tl.int64)
        rank = tl.sum(before, axis=0) + tl.cumsum(tie, axis=0) - tie
        keep = (key > v) | ((tie > 0) & (rank < need))
    else:
        keep = e > tl.load(thr_ptr)
    keep = keep & mask
    tl.store(keep_ptr + b * H * W + ps, keep.to(tl.int8), mask=mask)
    fill = tl.load(fill_ptr)
    pix = (ps // W) * stride_ih + (ps % W) * stride_iw
    for c in range(C):
        image = tl.load(img_ptr + b * stride_ib + c * stride_ic + pix, mask=mask & keep, other=fill)
        tl.store(out_ptr + (b * C + c) * H * W + ps, image, mask=mask)


def _tiles() -> dict[str, int]:
    if interpreter_enabled():
        return {"BLOCK": 16, "num_warps": 1}
    return {"BLOCK": 1024, "num_warps": 4}


@triton_op("saliency_mask_triton_fwd")
def saliency_mask_fwd(
    images: torch.Tensor, saliency: torch.Tensor, threshold: float, top_fraction: float, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked images [B, C, H, W], keep [B, H, W] bool); top_fraction < 0 means None."""
    batch, channels, height, width = images.shape
    out = torch.empty(images.shape, dtype=images.dtype, device=images.device)
    keep = torch.empty((batch, height, width), dtype=torch.bool, device=images.device)
    if batch == 0:
        return out, keep
    dtype = compute_dtype(saliency.dtype)
    top = top_fraction >= 0
    tiles = _tiles()
    num_tiles = triton.cdiv(height * width, tiles["BLOCK"])
    stats = saliency.new_empty((batch, 2), dtype=dtype)
    sel = saliency.new_empty((batch, 2), dtype=torch.int64)
    counts = saliency.new_empty((batch, num_tiles), dtype=torch.int64)
    keep_count = kept_pixel_count(top_fraction, height * width) if top else 0
    fp64 = dtype == torch.float64
    _, h, w = saliency.shape
    launch(
        select_kernel, (batch,), saliency, stats, sel, counts, h, w, height, width, num_tiles,
        keep_count, *saliency.stride(), TOP=top, FP64=fp64, BITS=63 if fp64 else 31, **tiles,
    )  # fmt: skip
    threshold_value = scalar(threshold, saliency)
    fill_value = torch.full((), fill, dtype=images.dtype, device=images.device)
    launch(
        mask_kernel, (batch, num_tiles), images, saliency, stats, sel, counts, threshold_value,
        fill_value, out, keep.view(torch.uint8), channels, h, w, height, width, num_tiles,
        *images.stride(), *saliency.stride(),
        TOP=top, FP64=fp64, BLOCK_T=min(triton.next_power_of_2(num_tiles), 1024), **tiles,
    )  # fmt: skip
    return out, keep


saliency_mask = torch.no_grad()(forward_function(SALIENCY_MASK, "saliency_mask_triton_fwd"))
