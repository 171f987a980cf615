"""torch.ops.amc_kernels.angular_distance_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd
from .._spec import ANGULAR_DISTANCE


@torch.library.register_fake("amc_kernels::angular_distance_fwd")
def _(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    rows = x.shape[0] if y is None else y.shape[0]
    return x.new_empty((x.shape[0], rows))


@torch.library.register_fake("amc_kernels::angular_distance_bwd")
def _(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    clamp_grad_at_bounds: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = x.new_empty(x.shape if output_mask[0] else (0,))
    grad_y = x.new_empty((0,)) if y is None or not output_mask[1] else y.new_empty(y.shape)
    return grad_x, grad_y


register_autograd(
    ANGULAR_DISTANCE,
    "angular_distance_fwd",
    "angular_distance_bwd",
    "cpp/cuda",
    extras=(CLAMP_GRAD_AT_BOUNDS,),
)
angular_distance = forward_function(ANGULAR_DISTANCE, "angular_distance_fwd")
