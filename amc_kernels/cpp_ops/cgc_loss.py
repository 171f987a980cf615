"""torch.ops.amc_kernels.cgc_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd, register_fakes
from .._spec import CGC_LOSS, Arguments, compute_dtype


def _outputs(a: Arguments) -> torch.Tensor:
    """The loss, a scalar in fp32 (fp64 for fp64 maps)."""
    cam_orig = a["cam_orig"]
    return cam_orig.new_empty((), dtype=compute_dtype(cam_orig.dtype))


register_fakes(CGC_LOSS, "cgc_loss_fwd", _outputs, "cgc_loss_bwd")
register_autograd(CGC_LOSS, "cgc_loss_fwd", "cgc_loss_bwd", "cpp/cuda")
cgc_loss = forward_function(CGC_LOSS, "cgc_loss_fwd")
