"""torch.ops.amc_kernels.class_activation_map_fwd/_bwd: fake kernels, autograd and backends."""

from __future__ import annotations

from typing import Any

import torch

from ._common import forbid_double_backward, register_compiled

OP = "class_activation_map"


def class_activation_map(
    activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The reference's signature on the compiled kernel."""
    return torch.ops.amc_kernels.class_activation_map_fwd(activations, fc_weight, targets)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    return activations.new_empty(activations.shape), fc_weight.new_empty(fc_weight.shape)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    activations, fc_weight, targets = ctx.saved_tensors
    grad_activations, grad_weight = torch.ops.amc_kernels.class_activation_map_bwd(
        grad, activations, fc_weight, targets
    )
    return grad_activations, grad_weight, None


torch.library.register_autograd(f"amc_kernels::{OP}_fwd", _backward, setup_context=_setup_context)
forbid_double_backward(OP)
register_compiled(OP, class_activation_map)
