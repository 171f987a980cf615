"""torch.ops.amc_kernels.class_activation_map_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd
from .._spec import CLASS_ACTIVATION_MAP


@torch.library.register_fake("amc_kernels::class_activation_map_fwd")
def _(activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = activations.shape
    return activations.new_empty((batch, height, width))


@torch.library.register_fake("amc_kernels::class_activation_map_bwd")
def _(
    grad: torch.Tensor,
    activations: torch.Tensor,
    fc_weight: torch.Tensor,
    targets: torch.Tensor,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        activations.new_empty(activations.shape if output_mask[0] else (0,)),
        fc_weight.new_empty(fc_weight.shape if output_mask[1] else (0,)),
    )


register_autograd(
    CLASS_ACTIVATION_MAP, "class_activation_map_fwd", "class_activation_map_bwd", "cpp/cuda"
)
class_activation_map = forward_function(CLASS_ACTIVATION_MAP, "class_activation_map_fwd")
