"""torch.ops.amc_kernels.amc_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import forward_function, register_autograd, register_fakes
from .._spec import AMC_LOSS, Arguments, compute_dtype


def _outputs(a: Arguments) -> torch.Tensor:
    """The loss: a scalar, or the [⌊N/2⌋] pair / [N] per-anchor vector for "none"."""
    features = a["features"]
    if a["reduction"] != "none":
        shape: tuple = ()
    elif a["pairs"] == "halves":
        shape = (features.shape[0] // 2,)
    else:
        shape = (features.shape[0],)
    return features.new_empty(shape, dtype=compute_dtype(features.dtype))


register_fakes(AMC_LOSS, "amc_loss_fwd", _outputs, "amc_loss_bwd")
register_autograd(
    AMC_LOSS, "amc_loss_fwd", "amc_loss_bwd", "cpp/cuda", extras=(CLAMP_GRAD_AT_BOUNDS,)
)
amc_loss = forward_function(AMC_LOSS, "amc_loss_fwd")
