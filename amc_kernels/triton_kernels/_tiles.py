"""Tile helpers shared by the Triton kernels of angular_distance, amc_loss and supcon_loss.

Matrix products run in one of four flavours (``MMA_*``), chosen per input dtype by
:func:`mma_kinds`:

* bf16/fp16 inputs enter ``tl.dot`` as stored, with fp32 accumulation. The product of two
  bf16 (or fp16) numbers is exact in fp32, so this equals casting the loads to fp32 at once,
  at tensor-core speed. Everything after the product runs in fp32.
* The gradient products G·Z of bf16 inputs cast the fp32 tile G to bf16 (as flash attention
  does with P); fp16 inputs use tf32 instead, where fp16 values are exact and G keeps fp32's
  range (in fp16 the small weights of a mean over a large batch would underflow).
* fp32 inputs use IEEE fp32 products (``input_precision="ieee"``): tf32 would move cosines near
  ±1 by far more than the arccos clamp allows.
* fp64 uses broadcast products and ``tl.sum``: Triton 3.6 has no fp64 ``tl.dot`` on NVIDIA GPUs.

Under the interpreter bf16 ``tl.dot`` is wrong (numpy multiplies the raw uint16 storage), so
there the low-precision flavour falls back to fp32 operands, which gives the same products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._dispatch import interpreter_enabled
from .._spec import NORM_EPS, compute_dtype
from ._common import launch

MMA_IEEE = tl.constexpr(0)
MMA_LOW = tl.constexpr(1)
MMA_TF32 = tl.constexpr(2)
MMA_FP64 = tl.constexpr(3)

_NORM_EPS = tl.constexpr(NORM_EPS)


def mma_kinds(dtype: torch.dtype) -> tuple[int, int]:
    """(flavour of the cosine/logit product, flavour of the gradient product) for `dtype`."""
    if dtype == torch.float64:
        return MMA_FP64.value, MMA_FP64.value
    if dtype == torch.float32 or interpreter_enabled():
        return MMA_IEEE.value, MMA_IEEE.value
    return MMA_LOW.value, (MMA_LOW.value if dtype == torch.bfloat16 else MMA_TF32.value)


@dataclass(frozen=True)
class Tiles:
    """Tile sizes and launch options of one kernel launch."""

    block_m: int
    block_n: int
    block_d: int  # the chunk of the feature axis D
    num_warps: int
    num_stages: int

    def kwargs(self, d: int) -> dict[str, int | bool]:
        """The kernel's tile constexprs and launch options; SINGLE: D fits in one chunk."""
        return {
            "SINGLE": d <= self.block_d,
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_D": self.block_d,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
        }


def pairwise_tiles(dtype: torch.dtype, d: int, backward: bool) -> Tiles:
    """Tiles of a kernel that streams [BLOCK_M, BLOCK_N] tiles of a pairwise product over D.

    bf16/fp16 (the fast path, sized for H100/H200): the whole feature axis is one chunk up to
    D = 256, so the row tile stays on chip; larger D streams 64-wide chunks. The backward keeps
    a [BLOCK_M, BLOCK_D] fp32 accumulator besides the logit tile, hence narrower column tiles.
    fp32 (IEEE products on CUDA cores) and fp64 (broadcast products) use small tiles that keep
    their unrolled products in registers. Tiny tiles under the interpreter, where every program
    is slow Python.
    """
    if interpreter_enabled():
        return Tiles(16, 16, 16, 1, 1)
    full = max(16, triton.next_power_of_2(max(d, 1)))
    if dtype == torch.float64:
        return Tiles(16, 16, 8, 4, 1)
    if dtype == torch.float32:
        return Tiles(32, 32, min(full, 32), 4, 2)
    block_d = full if full <= 256 else 64
    if backward or block_d == 256:
        return Tiles(128, 32, block_d, 8, 2)
    return Tiles(128, 64, block_d, 8, 3)


@triton.jit
def mma(acc, a, b, KIND: tl.constexpr):
    """acc + a @ b for a [M, K], b [K, N] in flavour KIND; acc is fp32 (fp64 for MMA_FP64)."""
    if KIND == MMA_FP64:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif KIND == MMA_LOW:
        return tl.dot(a, b, acc, out_dtype=tl.float32)
    elif KIND == MMA_TF32:
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=tl.float32)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def operand(x, KIND: tl.constexpr):
    """A loaded tile as an operand of flavour KIND: as stored (low/fp64), else fp32."""
    if KIND == MMA_LOW or KIND == MMA_FP64:  # noqa: SIM109 (Triton compiles no `in`)
        return x
    else:
        return x.to(tl.float32)


@triton.jit
def load_rows(ptr, rows, row_mask, d0, D, stride_row, stride_d, BLOCK_D: tl.constexpr):
    """Rows `rows` [R] × features d0..d0+BLOCK_D of a [*, D] matrix as an [R, BLOCK_D] tile."""
    dims = d0 + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (dims < D)[None, :]
    return tl.load(
        ptr + rows[:, None] * stride_row + dims[None, :] * stride_d, mask=mask, other=0.0
    )


@triton.jit
def load_cols(ptr, cols, col_mask, d0, D, stride_row, stride_d, BLOCK_D: tl.constexpr):
    """The same tile transposed: [BLOCK_D, C], ready to be the right operand of a product."""
    dims = d0 + tl.arange(0, BLOCK_D)
    mask = (dims < D)[:, None] & col_mask[None, :]
    return tl.load(
        ptr + dims[:, None] * stride_d + cols[None, :] * stride_row, mask=mask, other=0.0
    )


@triton.jit
def grad_operand(g, like, KIND: tl.constexpr):
    """An fp32/fp64 gradient tile as the left operand next to the tile `like`."""
    if KIND == MMA_LOW:
        return g.to(like.dtype)
    else:
        return g


@triton.jit
def gram_tile(
    acc,
    a_tile,
    b_tile,
    a_ptr,
    rows,
    row_mask,
    b_ptr,
    cols,
    col_mask,
    D,
    stride_a,
    stride_ad,
    stride_b,
    stride_bd,
    KIND: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """acc + ⟨a_rows, b_cols⟩ [R, C].

    SINGLE (D ≤ BLOCK_D): from the tiles already on chip, a_tile [R, BLOCK_D] and
    b_tile [C, BLOCK_D]; otherwise streamed from memory in BLOCK_D chunks.
    """
    if SINGLE:
        return mma(acc, operand(a_tile, KIND), operand(tl.trans(b_tile), KIND), KIND)
    else:
        for d0 in range(0, D, BLOCK_D):
            a = load_rows(a_ptr, rows, row_mask, d0, D, stride_a, stride_ad, BLOCK_D)
            b = load_cols(b_ptr, cols, col_mask, d0, D, stride_b, stride_bd, BLOCK_D)
            acc = mma(acc, operand(a, KIND), operand(b, KIND), KIND)
        return acc


@triton.jit
def row_tile(
    ptr, rows, row_mask, D, stride_n, stride_d, SINGLE: tl.constexpr, BLOCK_D: tl.constexpr
):
    """The rows' whole [R, BLOCK_D] tile when SINGLE (kept on chip for every column tile)."""
    tile = 0
    if SINGLE:
        tile = load_rows(ptr, rows, row_mask, 0, D, stride_n, stride_d, BLOCK_D)
    return tile


@triton.jit
def pair_tile(
    a_tile, p_ptr, rows, row_mask, row_scale, q_ptr, q_scale_ptr, n0, Q, d0, D,
    stride_pn, stride_pd, stride_qn, stride_qd,
    KIND: tl.constexpr, SINGLE: tl.constexpr, LOAD_Q: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The tile of the pairs (rows of p) × (columns cols = n0 + [0, BLOCK_N) of q), the step of
    every pairwise kernel: (cols, col_mask, q_tile, gram, q_scale, scaled).

    gram = ⟨p_r, q_c⟩ [BLOCK_M, BLOCK_N] (gram_tile; a_tile from row_tile), q_scale the column
    scales q_scale_ptr[cols] and scaled = gram·row_scale_r·q_scale_c (row_scale: [BLOCK_M], in
    the accumulation dtype). q_tile: q's [BLOCK_N, BLOCK_D] tile at the features d0 when LOAD_Q
    (a gradient's right operand, or the SINGLE forward's tile, with d0 = 0), else 0.
    """
    cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
    col_mask = cols < Q
    q_tile = 0
    if LOAD_Q:
        q_tile = load_rows(q_ptr, cols, col_mask, d0, D, stride_qn, stride_qd, BLOCK_D)
    gram = gram_tile(
        tl.zeros([BLOCK_M, BLOCK_N], dtype=row_scale.dtype), a_tile, q_tile, p_ptr, rows,
        row_mask, q_ptr, cols, col_mask, D, stride_pn, stride_pd, stride_qn, stride_qd,
        KIND, SINGLE, BLOCK_D,
    )  # fmt: skip
    q_scale = tl.load(q_scale_ptr + cols, mask=col_mask, other=0.0)
    scaled = gram * row_scale[:, None] * q_scale[None, :]
    return cols, col_mask, q_tile, gram, q_scale, scaled


@triton.jit
def row_block(R, BLOCK_M: tl.constexpr):
    """This program's block of rows along grid axis 0, [BLOCK_M] int64, and its mask rows < R."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows, rows < R


@triton.jit
def store_rows(out_ptr, acc, rows, row_mask, d0, D, stride_on, stride_od, BLOCK_D: tl.constexpr):
    """acc [R, BLOCK_D] into the rows `rows` × features d0..d0+BLOCK_D of out [*, D]."""
    dims = d0 + tl.arange(0, BLOCK_D)
    out = out_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od
    tl.store(out, acc, mask=row_mask[:, None] & (dims < D)[None, :])


@triton.jit
def inv_norm_kernel(
    x_ptr,
    out_ptr,
    R,
    D,
    stride_r,
    stride_d,
    FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_r = 1 / max(‖x_r‖₂, NORM_EPS).
    # Grid: (cdiv(R, BLOCK_M),), one program per block of rows, looping over D in chunks.
    # Accumulation: fp32 (fp64 for fp64 inputs).
    rows, row_mask = row_block(R, BLOCK_M)
    total = tl.zeros([BLOCK_M], dtype=tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x = load_rows(x_ptr, rows, row_mask, d0, D, stride_r, stride_d, BLOCK_D).to(total.dtype)
        total += tl.sum(x * x, axis=1)
    if FP64:
        norm = tl.maximum(tl.sqrt(total), tl.full([], _NORM_EPS, tl.float64))
        inv = 1.0 / norm
    else:
        norm = tl.maximum(tl.sqrt_rn(total), tl.full([], _NORM_EPS, tl.float32))
        inv = tl.div_rn(tl.full([], 1.0, tl.float32), norm)
    tl.store(out_ptr + rows, inv, mask=row_mask)


def inv_norms(x: torch.Tensor) -> torch.Tensor:
    """1 / max(‖x_r‖, NORM_EPS) for the rows of x [R, D], in the compute dtype."""
    rows, d = x.shape
    out = torch.empty(rows, dtype=compute_dtype(x.dtype), device=x.device)
    if rows:
        block_m = 16 if interpreter_enabled() else 64
        block_d = min(triton.next_power_of_2(max(d, 1)), 16 if interpreter_enabled() else 128)
        launch(
            inv_norm_kernel,
            (triton.cdiv(rows, block_m),),
            x,
            out,
            rows,
            d,
            x.stride(0),
            x.stride(1),
            FP64=x.dtype == torch.float64,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
        )
    return out


def normalize_backward(x: torch.Tensor, grad_hat: torch.Tensor, at_bounds: bool) -> torch.Tensor:
    """∂L/∂x from ∂L/∂x̂ for x̂ = x / max(‖x‖, NORM_EPS) (F.normalize), in the compute dtype.

    (g − x̂⟨x̂, g⟩) / ‖x‖ above the eps, g / eps below it; at ‖x‖ = eps as torch's clamp_min
    with the convention `at_bounds` (amc_kernels._clamp_convention).
    """
    x = x.to(grad_hat.dtype)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    denom = norm.clamp_min(NORM_EPS)
    x_hat = x / denom
    radial = (x_hat * grad_hat).sum(dim=-1, keepdim=True)
    above = norm >= NORM_EPS if at_bounds else norm > NORM_EPS
    return (grad_hat - torch.where(above, x_hat * radial, torch.zeros_like(x_hat))) / denom
