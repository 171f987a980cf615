"""torch.ops.amc_kernels.class_activation_map_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd, register_fakes
from .._spec import CLASS_ACTIVATION_MAP, Arguments


def _outputs(a: Arguments) -> torch.Tensor:
    """CAM [B, H, W] in the activations' dtype."""
    activations = a["activations"]
    batch, _, height, width = activations.shape
    return activations.new_empty((batch, height, width))


register_fakes(
    CLASS_ACTIVATION_MAP, "class_activation_map_fwd", _outputs, "class_activation_map_bwd"
)
register_autograd(
    CLASS_ACTIVATION_MAP, "class_activation_map_fwd", "class_activation_map_bwd", "cpp/cuda"
)
class_activation_map = forward_function(CLASS_ACTIVATION_MAP, "class_activation_map_fwd")
