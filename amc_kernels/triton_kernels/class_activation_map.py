"""Triton class_activation_map (DESIGN §2.5): CAM_b = Σ_k W[t_b, k]·A_bk / (H·W), fused over K.

Forward: weighted_sum_kernel with the weight row gathered at t_b (one pixel tile per program;
channels split over programs, atomically, for small maps).
Backward: weighted_sum_bwd_kernel, one block of channels per program: dA_bk = W[t_b, k]·g_b/(H·W)
and dW[t_b, k] += Σ_hw g_b ⊙ A_bk/(H·W), accumulated with atomics in the compute dtype (several
maps may share a class; B·K atomics in all, so contention is low).
"""

from __future__ import annotations

from typing import Any

import torch
import triton

from ._common import register_triton
from ._maps import k_split, map_tiles, weighted_sum_bwd_kernel, weighted_sum_kernel
from ._tiles import compute_dtype, forbid_double_backward, launch

OP = "class_activation_map"


@torch.library.triton_op("amc_kernels::class_activation_map_triton_fwd", mutates_args=())
def class_activation_map_fwd(
    activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """CAM [B, H, W] in the activations' dtype."""
    batch, k, h, w = activations.shape
    tiles = map_tiles(k, h * w)
    split, k_chunk = k_split(batch, k, h * w, tiles)
    dtype = compute_dtype(activations.dtype) if split > 1 else activations.dtype
    out = activations.new_zeros((batch, h, w), dtype=dtype)
    if out.numel() == 0:
        return out.to(activations.dtype)
    launch(
        weighted_sum_kernel, (batch, triton.cdiv(h * w, tiles["BLOCK_HW"]), split),
        activations, activations, fc_weight, targets, out, k, k_chunk, h * w, w, h * w,
        *activations.stride(), *activations.stride(), *fc_weight.stride(),
        ELEMENTWISE=False, GATHER=True, SPLIT=split > 1,
        FP64=activations.dtype == torch.float64, **tiles,
    )  # fmt: skip
    return out.to(activations.dtype)


@torch.library.triton_op("amc_kernels::class_activation_map_triton_bwd", mutates_args=())
def class_activation_map_bwd(
    grad: torch.Tensor, activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂activations, ∂L/∂fc_weight) in their dtypes, from ∂L/∂CAM."""
    batch, k, h, w = activations.shape
    grad_a = torch.zeros_like(activations, memory_format=torch.contiguous_format)
    grad_w = fc_weight.new_zeros(fc_weight.shape, dtype=compute_dtype(fc_weight.dtype))
    if grad_a.numel() == 0:
        return grad_a, grad_w.to(fc_weight.dtype)
    tiles = map_tiles(k, h * w)
    launch(
        weighted_sum_bwd_kernel, (batch, triton.cdiv(k, tiles["BLOCK_K"])),
        activations, activations, fc_weight, targets, grad, grad, grad_a, grad_a, grad_w,
        k, h * w, w, h * w, *activations.stride(), *activations.stride(), *fc_weight.stride(),
        *grad.stride(),
        ELEMENTWISE=False, GATHER=True, RELU=False, MEAN_G=False,
        FP64=activations.dtype == torch.float64, **tiles,
    )  # fmt: skip
    return grad_a, grad_w.to(fc_weight.dtype)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    grad_a, grad_w = class_activation_map_bwd(grad, *ctx.saved_tensors)
    return grad_a, grad_w, None


class_activation_map_fwd.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(OP, class_activation_map_bwd)


def class_activation_map(
    activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The reference's signature on the Triton kernels (inputs validated by the caller)."""
    return class_activation_map_fwd(activations, fc_weight, targets)


register_triton(OP, class_activation_map)
