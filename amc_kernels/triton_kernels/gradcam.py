"""Triton gradcam (docs/design.md#24-gradcam): weighting fused over K, ReLU, bilinear resize,
normalisation.

Forward: α_bk = mean_hw G_bk (alpha_kernel, "mean" only); raw_b = Σ_k α_bk·A_bk or
Σ_k G_bk ⊙ A_bk (weighted_sum_kernel); y_b = resize(ReLU(raw_b)) with per-tile max/min/sum
partials (resize_kernel); out_b = normalize(y_b) from the reduced partials (normalize_kernel).
The forward saves raw and α; y is recomputed in the backward (with the partials it needs).
Backward: the tie counts and Σ g·y of the normalisation come per tile (norm_partials_kernel);
norm_bwd_kernel forms dY (amax/amin split their gradient evenly among ties, as torch) and
scatters it through the resize transpose with atomics into dReLU [B, h, w]; weighted_sum_bwd_kernel
applies the ReLU mask and the chain rule to A and G ("mean": dG_bk = Σ_hw dRaw ⊙ A_bk/(H·W) is
one value per channel, returned as [B, K, 1, 1] and expanded over H×W, so no B·K·H·W dG is
written). Under output_mask it computes only dA or only dG (and loads only what that needs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._register import forward_function, register_autograd
from .._spec import GRADCAM, compute_dtype
from ._common import launch, not_computed, triton_op
from ._interp import bilinear_sample, bilinear_scatter
from ._maps import (
    k_split,
    map_eps,
    map_offsets,
    map_tiles,
    minmax_normalized,
    pixel_tiles,
    weighted_sum_bwd_kernel,
    weighted_sum_kernel,
)

NORMALIZE = {"none": 0, "max": 1, "minmax": 2, "sum": 3}  # the kernels' encoding (_spec)


@triton.jit
def alpha_kernel(
    g_ptr, alpha_ptr, K, HW, W, stride_b, stride_k, stride_h, stride_w,
    FP64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # α_bk = Σ_hw G_bkhw / (H·W); alpha: [B, K] contiguous.
    # Grid: (B, cdiv(K, BLOCK_K)): a block of channels of one map per program, streaming H·W in
    # BLOCK_HW chunks. Accumulation: fp32 (fp64 for fp64 inputs).
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_K, BLOCK_HW], dtype=dtype)
    for p0 in range(0, HW, BLOCK_HW):
        ps = p0 + tl.arange(0, BLOCK_HW).to(tl.int64)
        mask = (ks < K)[:, None] & (ps < HW)[None, :]
        offsets = map_offsets(b, ks, ps, W, stride_b, stride_k, stride_h, stride_w)
        acc += tl.load(g_ptr + offsets, mask=mask, other=0.0).to(dtype)
    tl.store(alpha_ptr + b * K + ks, tl.sum(acc, axis=1) / HW, mask=ks < K)


@triton.jit
def resize_kernel(
    raw_ptr, y_ptr, part_ptr, h, w, H, W, T,
    RELU: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # y_b = bilinear(ReLU(raw_b) → H×W) (taps of _interp.linear_tap; raw [B, h, w], y [B, H, W]
    # contiguous); part[b, t] = (max, min, Σ) of tile t of y_b.
    # Grid: (B, T = cdiv(H·W, BLOCK)): one pixel tile of one map per program.
    # Accumulation: fp32 (fp64 for fp64 inputs).
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64)
    ps = t * BLOCK + tl.arange(0, BLOCK)
    mask = ps < H * W
    y = bilinear_sample(raw_ptr + b * h * w, ps // W, ps % W, mask, h, w, H, W, w, 1, RELU, FP64)
    tl.store(y_ptr + b * H * W + ps, y, mask=mask)
    part = part_ptr + (b * T + t) * 3
    tl.store(part, tl.max(tl.where(mask, y, -float("inf")), axis=0))
    tl.store(part + 1, tl.min(tl.where(mask, y, float("inf")), axis=0))
    tl.store(part + 2, tl.sum(tl.where(mask, y, 0.0), axis=0))


@triton.jit
def map_stats(part_ptr, b, T, FP64: tl.constexpr, BLOCK_T: tl.constexpr):
    """(max, min, Σ) of map b from its T tile partials (max, min, Σ) [B, T, 3]."""
    dtype = tl.float64 if FP64 else tl.float32
    hi = tl.full([BLOCK_T], -float("inf"), dtype)
    lo = tl.full([BLOCK_T], float("inf"), dtype)
    total = tl.zeros([BLOCK_T], dtype)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        part = part_ptr + (b * T + ts) * 3
        hi = tl.maximum(hi, tl.load(part, mask=ts < T, other=-float("inf")))
        lo = tl.minimum(lo, tl.load(part + 1, mask=ts < T, other=float("inf")))
        total += tl.load(part + 2, mask=ts < T, other=0.0)
    return tl.max(hi, axis=0), tl.min(lo, axis=0), tl.sum(total, axis=0)


@triton.jit
def normalize_kernel(
    y_ptr, part_ptr, out_ptr, HW, T,
    MODE: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # MODE 0: out = y; 1: y/(max + ε); 2: (y − min)/((max − min) + ε) (max − min = max(y − min)
    # exactly: rounding is monotonic); 3: y/(Σy + ε) + ε; ε = MAP_EPS; y, out [B, H·W] contiguous.
    # Grid: (B, T): one pixel tile per program, each reducing its map's T partials first.
    # Accumulation: fp32 (fp64 for fp64 inputs).
    b = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = ps < HW
    y = tl.load(y_ptr + b * HW + ps, mask=mask, other=0.0)
    hi, lo, total = map_stats(part_ptr, b, T, FP64, BLOCK_T)
    eps = map_eps(FP64)
    out = y
    if MODE == 1:
        out = y / (hi + eps)
    elif MODE == 2:
        out = minmax_normalized(y, lo, hi, FP64)
    elif MODE == 3:
        out = y / (total + eps) + eps
    tl.store(out_ptr + b * HW + ps, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def norm_partials_kernel(
    y_ptr, part_ptr, g_ptr, bwd_ptr, H, W, T, stride_gb, stride_gh, stride_gw,
    MODE: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # Per tile t of map b: bwd[b, t] = (#{y = max}, #{y = min}, #{y − min = max − min},
    # Σ g·v, Σ g) with v = y − min for MODE 2 (minmax), else v = y; g = ∂L/∂out (strided).
    # Grid: (B, T): one pixel tile per program. Accumulation: fp32 (fp64 for fp64 inputs).
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64)
    ps = t * BLOCK + tl.arange(0, BLOCK)
    mask = ps < H * W
    y = tl.load(y_ptr + b * H * W + ps, mask=mask, other=0.0)
    g_off = b * stride_gb + (ps // W) * stride_gh + (ps % W) * stride_gw
    g = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(dtype)
    hi, lo, _ = map_stats(part_ptr, b, T, FP64, BLOCK_T)
    v = y
    if MODE == 2:
        v = y - lo
    bwd = bwd_ptr + (b * T + t) * 5
    tl.store(bwd, tl.sum(tl.where(mask & (y == hi), 1.0, 0.0).to(dtype), axis=0))
    tl.store(bwd + 1, tl.sum(tl.where(mask & (y == lo), 1.0, 0.0).to(dtype), axis=0))
    tl.store(bwd + 2, tl.sum(tl.where(mask & (v == hi - lo), 1.0, 0.0).to(dtype), axis=0))
    tl.store(bwd + 3, tl.sum(g * v, axis=0))
    tl.store(bwd + 4, tl.sum(g, axis=0))


@triton.jit
def norm_bwd_kernel(
    y_ptr, part_ptr, bwd_ptr, g_ptr, d_ptr, h, w, H, W, T, stride_gb, stride_gh, stride_gw,
    MODE: tl.constexpr, RESIZE: tl.constexpr, FP64: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # dY = ∂L/∂y of the normalisation: MODE 1: g/(m + ε) − [y = m]·(Σ g·y)/(m + ε)²/#{y = m};
    # MODE 2 (s = y − min, r = max − min): dS = g/(r + ε) − [s = r]·(Σ g·s)/(r + ε)²/#{s = r},
    # dY = dS − [y = min]·(Σ dS)/#{y = min}; MODE 3: g/(Σy + ε) − (Σ g·y)/(Σy + ε)²; MODE 0: g.
    # RESIZE: d[b] (dReLU [B, h, w], zeroed) += resizeᵀ(dY) through atomics; else d[b] = dY.
    # Grid: (B, T): one pixel tile of the resized map per program. Accumulation: fp32 (fp64).
    dtype = tl.float64 if FP64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = ps < H * W
    y = tl.load(y_ptr + b * H * W + ps, mask=mask, other=0.0)
    g_off = b * stride_gb + (ps // W) * stride_gh + (ps % W) * stride_gw
    g = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(dtype)
    hi, lo, total = map_stats(part_ptr, b, T, FP64, BLOCK_T)
    n_hi = tl.zeros([BLOCK_T], dtype)
    n_lo = tl.zeros([BLOCK_T], dtype)
    n_range = tl.zeros([BLOCK_T], dtype)
    gv = tl.zeros([BLOCK_T], dtype)
    g_sum = tl.zeros([BLOCK_T], dtype)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        bwd = bwd_ptr + (b * T + ts) * 5
        n_hi += tl.load(bwd, mask=ts < T, other=0.0)
        n_lo += tl.load(bwd + 1, mask=ts < T, other=0.0)
        n_range += tl.load(bwd + 2, mask=ts < T, other=0.0)
        gv += tl.load(bwd + 3, mask=ts < T, other=0.0)
        g_sum += tl.load(bwd + 4, mask=ts < T, other=0.0)
    gv_all = tl.sum(gv, axis=0)
    eps = map_eps(FP64)
    dy = g
    if MODE == 1:
        den = hi + eps
        tie = tl.where(y == hi, 1.0, 0.0).to(dtype) / tl.sum(n_hi, axis=0)
        dy = g / den - tie * (gv_all / (den * den))
    elif MODE == 2:
        den = (hi - lo) + eps
        share = gv_all / (den * den)
        tie = tl.where(y - lo == hi - lo, 1.0, 0.0).to(dtype) / tl.sum(n_range, axis=0)
        ds = g / den - tie * share
        ds_sum = tl.sum(g_sum, axis=0) / den - share
        dy = ds - tl.where(y == lo, 1.0, 0.0).to(dtype) / tl.sum(n_lo, axis=0) * ds_sum
    elif MODE == 3:
        den = total + eps
        dy = g / den - gv_all / (den * den)
    if RESIZE:
        bilinear_scatter(d_ptr + b * h * w, dy, ps // W, ps % W, mask, h, w, H, W, w, 1, FP64)
    else:
        tl.store(d_ptr + b * H * W + ps, dy, mask=mask)


def _weighted_sum(a: torch.Tensor, g: torch.Tensor, weighting: str) -> tuple:
    """(raw [B, h, w], α [B, K] or [B, 0]) in the compute dtype."""
    batch, k, h, w = a.shape
    dtype = compute_dtype(a.dtype)
    tiles = map_tiles(k, h * w)
    alpha = a.new_empty((batch, k if weighting == "mean" else 0), dtype=dtype)
    raw = a.new_zeros((batch, h, w), dtype=dtype)
    fp64 = a.dtype == torch.float64
    if weighting == "mean":
        launch(
            alpha_kernel, (batch, triton.cdiv(k, tiles["BLOCK_K"])),
            g, alpha, k, h * w, w, *g.stride(), FP64=fp64, **tiles,
        )  # fmt: skip
    weights = alpha if weighting == "mean" else g
    split, k_chunk = k_split(batch, k, h * w, tiles)
    launch(
        weighted_sum_kernel, (batch, triton.cdiv(h * w, tiles["BLOCK_HW"]), split),
        a, g, weights, raw, raw, k, k_chunk, h * w, w, 1, *a.stride(), *g.stride(),
        k if weighting == "mean" else 0, 1,
        ELEMENTWISE=weighting == "elementwise", GATHER=False, SPLIT=split > 1, FP64=fp64,
        **tiles,
    )  # fmt: skip
    return raw, alpha


def _resize(raw: torch.Tensor, size: tuple[int, int], relu: bool) -> tuple:
    """(y [B, H', W'], tile partials [B, T, 3]) of ReLU(raw) resized to `size`."""
    batch, h, w = raw.shape
    tiles = pixel_tiles()
    num_tiles = triton.cdiv(size[0] * size[1], tiles["BLOCK"])
    y = raw.new_empty((batch, *size))
    part = raw.new_empty((batch, num_tiles, 3))
    launch(
        resize_kernel, (batch, num_tiles), raw, y, part, h, w, size[0], size[1], num_tiles,
        RELU=relu, FP64=raw.dtype == torch.float64, **tiles,
    )  # fmt: skip
    return y, part


def _block_t(num_tiles: int) -> int:
    return min(triton.next_power_of_2(num_tiles), 1024)


@triton_op("gradcam_triton_fwd")
def gradcam_fwd(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps [B, H', W'] in the activations' dtype, raw [B, h, w], α [B, K] or [B, 0]; both in
    the compute dtype); normalize "none" is no normalisation, output_size [] keeps the size."""
    batch, _, h, w = activations.shape
    size = (output_size[0], output_size[1]) if output_size else (h, w)
    out = activations.new_empty((batch, *size))
    raw, alpha = _weighted_sum(activations, gradients, weighting)
    if batch == 0:
        return out, raw, alpha
    y, part = _resize(raw, size, relu)
    tiles = pixel_tiles()
    num_tiles = part.shape[1]
    launch(
        normalize_kernel, (batch, num_tiles), y, part, out, size[0] * size[1], num_tiles,
        MODE=NORMALIZE[normalize], FP64=raw.dtype == torch.float64,
        BLOCK_T=_block_t(num_tiles), **tiles,
    )  # fmt: skip
    return out, raw, alpha


@triton_op("gradcam_triton_bwd")
def gradcam_bwd(
    grad: torch.Tensor,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    raw: torch.Tensor,
    alpha: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂activations, ∂L/∂gradients) in their dtypes, from ∂L/∂maps, each empty when
    output_mask does not request it; with "mean" weighting ∂L/∂gradients is one value per
    channel, [B, K, 1, 1] (the autograd formula expands it over H×W)."""
    batch, k, h, w = activations.shape
    want_a, want_g = output_mask[0], output_mask[1]
    elementwise = weighting == "elementwise"
    grad_a = not_computed(activations)
    if want_a:
        grad_a = torch.empty_like(activations, memory_format=torch.contiguous_format)
    grad_g = not_computed(gradients)
    if want_g:
        grad_g = gradients.new_empty(gradients.shape if elementwise else (batch, k, 1, 1))
    if batch == 0 or not (want_a or want_g):
        return grad_a, grad_g
    fp64 = activations.dtype == torch.float64
    size = (output_size[0], output_size[1]) if output_size else (h, w)
    y, part = _resize(raw, size, relu)
    tiles = pixel_tiles()
    num_tiles = part.shape[1]
    mode = NORMALIZE[normalize]
    bwd = raw.new_empty((batch, num_tiles, 5))
    resize = bool(output_size)
    d_relu = torch.zeros_like(raw) if resize else torch.empty_like(raw)
    common = dict(FP64=fp64, BLOCK_T=_block_t(num_tiles), **tiles)
    launch(
        norm_partials_kernel, (batch, num_tiles), y, part, grad, bwd, *size, num_tiles,
        *grad.stride(), MODE=mode, **common,
    )  # fmt: skip
    launch(
        norm_bwd_kernel, (batch, num_tiles), y, part, bwd, grad, d_relu, h, w, *size,
        num_tiles, *grad.stride(), MODE=mode, RESIZE=resize, **common,
    )  # fmt: skip
    map_tile = map_tiles(k, h * w)
    # Placeholders for the outputs that are not computed: the kernel never touches them.
    out_a = grad_a if want_a else raw
    out_g = grad_g if want_g else raw
    launch(
        weighted_sum_bwd_kernel, (batch, triton.cdiv(k, map_tile["BLOCK_K"])),
        activations, gradients, gradients if elementwise else alpha, raw, raw, d_relu,
        out_a, out_g, out_g, k, h * w, w, 1, *activations.stride(), *gradients.stride(),
        0 if elementwise else k, 1, *d_relu.stride(),
        ELEMENTWISE=elementwise, GATHER=False, RELU=relu, MEAN_G=not elementwise,
        GRAD_A=want_a, GRAD_W=want_g, FP64=fp64, **map_tile,
    )  # fmt: skip
    return grad_a, grad_g


register_autograd(GRADCAM, "gradcam_triton_fwd", "gradcam_triton_bwd", "triton")
gradcam = forward_function(GRADCAM, "gradcam_triton_fwd")
