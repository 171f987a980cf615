"""Triton class_activation_map (docs/design.md#25-class_activation_map): CAM_b = Σ_k W[t_b, k]·A_bk
/ (H·W), fused over K.

Forward: weighted_sum_kernel with the weight row gathered at t_b (one pixel tile per program;
channels split over programs, atomically, for small maps).
Backward: weighted_sum_bwd_kernel, one block of channels per program: dA_bk = W[t_b, k]·g_b/(H·W)
and dW[t_b, k] += Σ_hw g_b ⊙ A_bk/(H·W), accumulated with atomics in the compute dtype (several
maps may share a class; B·K atomics in all, so contention is low). Under output_mask it
computes only dA (reading W) or only dW (reading A and no dA store).
"""

from __future__ import annotations

import torch
import triton

from .._register import forward_function, register_autograd
from .._spec import CLASS_ACTIVATION_MAP, compute_dtype
from ._common import launch, not_computed, triton_op
from ._maps import k_split, map_tiles, weighted_sum_bwd_kernel, weighted_sum_kernel


@triton_op("class_activation_map_triton_fwd")
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
        activations, activations, fc_weight, targets.contiguous(), out, k, k_chunk, h * w, w,
        h * w, *activations.stride(), *activations.stride(), *fc_weight.stride(),
        ELEMENTWISE=False, GATHER=True, SPLIT=split > 1,
        FP64=activations.dtype == torch.float64, **tiles,
    )  # fmt: skip
    return out.to(activations.dtype)


@triton_op("class_activation_map_triton_bwd")
def class_activation_map_bwd(
    grad: torch.Tensor,
    activations: torch.Tensor,
    fc_weight: torch.Tensor,
    targets: torch.Tensor,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂activations, ∂L/∂fc_weight) in their dtypes, from ∂L/∂CAM; each empty when
    output_mask does not request it."""
    batch, k, h, w = activations.shape
    want_a, want_w = output_mask[0], output_mask[1]
    grad_a = not_computed(activations)
    if want_a:
        grad_a = torch.zeros_like(activations, memory_format=torch.contiguous_format)
    grad_w = not_computed(fc_weight)
    if want_w:
        grad_w = fc_weight.new_zeros(fc_weight.shape, dtype=compute_dtype(fc_weight.dtype))
    if activations.numel() and (want_a or want_w):
        tiles = map_tiles(k, h * w)
        out_a = grad_a if want_a else grad_w  # a placeholder that the kernel never touches
        launch(
            weighted_sum_bwd_kernel, (batch, triton.cdiv(k, tiles["BLOCK_K"])),
            activations, activations, fc_weight, targets.contiguous(), grad, grad, out_a, out_a,
            grad_w, k, h * w, w, h * w, *activations.stride(), *activations.stride(),
            *fc_weight.stride(), *grad.stride(),
            ELEMENTWISE=False, GATHER=True, RELU=False, MEAN_G=False, GRAD_A=want_a,
            GRAD_W=want_w, FP64=activations.dtype == torch.float64, **tiles,
        )  # fmt: skip
    return grad_a, grad_w.to(fc_weight.dtype)


register_autograd(
    CLASS_ACTIVATION_MAP,
    "class_activation_map_triton_fwd",
    "class_activation_map_triton_bwd",
    "triton",
)
class_activation_map = forward_function(CLASS_ACTIVATION_MAP, "class_activation_map_triton_fwd")
