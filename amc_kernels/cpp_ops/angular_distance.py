"""torch.ops.amc_kernels.angular_distance_{fwd,bwd}: fake kernels, autograd, cpp/cuda backends."""

from __future__ import annotations

from typing import Any

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from ._common import forbid_double_backward, register_compiled

OP = "angular_distance"


@torch.library.register_fake("amc_kernels::angular_distance_fwd")
def _(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    rows = x.shape[0] if y is None else y.shape[0]
    return x.new_empty((x.shape[0], rows))


@torch.library.register_fake("amc_kernels::angular_distance_bwd")
def _(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, clamp_grad_at_bounds: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_y = x.new_empty((0,)) if y is None else y.new_empty(y.shape)
    return x.new_empty(x.shape), grad_y


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, y = inputs
    ctx.save_for_backward(x, y)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, y = ctx.saved_tensors
    grad_x, grad_y = torch.ops.amc_kernels.angular_distance_bwd(grad, x, y, CLAMP_GRAD_AT_BOUNDS)
    return grad_x, (None if y is None else grad_y)


torch.library.register_autograd(
    "amc_kernels::angular_distance_fwd", _backward, setup_context=_setup_context
)
forbid_double_backward(OP)


def angular_distance(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's signature on the compiled kernels (inputs validated by the caller)."""
    return torch.ops.amc_kernels.angular_distance_fwd(x, y)


register_compiled(OP, angular_distance)
