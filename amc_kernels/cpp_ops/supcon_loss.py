"""torch.ops.amc_kernels.supcon_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd, register_fakes
from .._spec import SUPCON_LOSS, Arguments, compute_dtype


def _outputs(a: Arguments) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss: a scalar, or [A] for "none"; lse [A]) with A = N·V ("all") or N ("one")."""
    features = a["features"]
    samples, views = features.shape[0], features.shape[1]
    anchors = samples * views if a["contrast_mode"] == "all" else samples
    dtype = compute_dtype(features.dtype)
    loss_shape = (anchors,) if a["reduction"] == "none" else ()
    return features.new_empty(loss_shape, dtype=dtype), features.new_empty((anchors,), dtype=dtype)


register_fakes(SUPCON_LOSS, "supcon_loss_fwd", _outputs, "supcon_loss_bwd")
register_autograd(SUPCON_LOSS, "supcon_loss_fwd", "supcon_loss_bwd", "cpp/cuda")
supcon_loss = forward_function(SUPCON_LOSS, "supcon_loss_fwd")
