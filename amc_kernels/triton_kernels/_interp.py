"""Bilinear taps of torch's upsample_bilinear2d (align_corners=False), shared by the map kernels.

Mirrors linear_tap of csrc/include/amc_kernels/math.h: s = (dst + ½)·in/out − ½ clamped below
at 0, i0 = ⌊s⌋ ≤ in − 1, i1 = min(i0 + 1, in − 1), w1 = s − i0 clamped to [0, 1], w0 = 1 − w1,
all in the compute dtype (fp32, fp64 for fp64 maps) as torch computes them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def linear_tap(dst, in_size, out_size, FP64: tl.constexpr):
    """(i0, i1, w0, w1) of output index `dst` (int64 tensor) on one axis."""
    dtype = tl.float64 if FP64 else tl.float32
    # tl.cast, not .to: a size equal to 1 arrives as a constexpr (Triton's specialisation).
    scale = tl.cast(in_size, dtype) / tl.cast(out_size, dtype)
    src = tl.maximum(scale * (dst.to(dtype) + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int64), in_size - 1)  # src ≥ 0: truncation is the floor
    i1 = tl.minimum(i0 + 1, in_size - 1)
    w1 = tl.minimum(tl.maximum(src - i0.to(dtype), 0.0), 1.0)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def bilinear_sample(
    src_ptr, oy, ox, mask, h, w, H, W, stride_h, stride_w, RELU: tl.constexpr, FP64: tl.constexpr
):
    """Pixels (oy, ox) of the [h, w] map at src_ptr resized to [H, W]; ReLU on the source first.

    Combined as torch does: w0y·(w0x·v00 + w1x·v01) + w1y·(w0x·v10 + w1x·v11).
    """
    dtype = tl.float64 if FP64 else tl.float32
    y0, y1, wy0, wy1 = linear_tap(oy, h, H, FP64)
    x0, x1, wx0, wx1 = linear_tap(ox, w, W, FP64)
    v00 = tl.load(src_ptr + y0 * stride_h + x0 * stride_w, mask=mask, other=0.0).to(dtype)
    v01 = tl.load(src_ptr + y0 * stride_h + x1 * stride_w, mask=mask, other=0.0).to(dtype)
    v10 = tl.load(src_ptr + y1 * stride_h + x0 * stride_w, mask=mask, other=0.0).to(dtype)
    v11 = tl.load(src_ptr + y1 * stride_h + x1 * stride_w, mask=mask, other=0.0).to(dtype)
    if RELU:
        v00 = tl.maximum(v00, 0.0)
        v01 = tl.maximum(v01, 0.0)
        v10 = tl.maximum(v10, 0.0)
        v11 = tl.maximum(v11, 0.0)
    return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


@triton.jit
def bilinear_scatter(
    dst_ptr, grad, oy, ox, mask, h, w, H, W, stride_h, stride_w, FP64: tl.constexpr
):
    """Transpose of bilinear_sample: adds each output pixel's grad to its four taps (atomics)."""
    y0, y1, wy0, wy1 = linear_tap(oy, h, H, FP64)
    x0, x1, wx0, wx1 = linear_tap(ox, w, W, FP64)
    tl.atomic_add(dst_ptr + y0 * stride_h + x0 * stride_w, grad * wy0 * wx0, mask=mask)
    tl.atomic_add(dst_ptr + y0 * stride_h + x1 * stride_w, grad * wy0 * wx1, mask=mask)
    tl.atomic_add(dst_ptr + y1 * stride_h + x0 * stride_w, grad * wy1 * wx0, mask=mask)
    tl.atomic_add(dst_ptr + y1 * stride_h + x1 * stride_w, grad * wy1 * wx1, mask=mask)
