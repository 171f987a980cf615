"""torch.ops.amc_kernels.angular_distance_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd, register_fakes
from .._spec import ANGULAR_DISTANCE, Arguments


def _outputs(a: Arguments) -> torch.Tensor:
    """θ [N, M] in x's dtype (y = None: M = N)."""
    x, y = a["x"], a["y"]
    return x.new_empty((x.shape[0], x.shape[0] if y is None else y.shape[0]))


register_fakes(ANGULAR_DISTANCE, "angular_distance_fwd", _outputs, "angular_distance_bwd")
register_autograd(
    ANGULAR_DISTANCE,
    "angular_distance_fwd",
    "angular_distance_bwd",
    "cpp/cuda",
    extras=(CLAMP_GRAD_AT_BOUNDS,),
)
angular_distance = forward_function(ANGULAR_DISTANCE, "angular_distance_fwd")
