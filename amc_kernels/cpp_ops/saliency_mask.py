"""torch.ops.amc_kernels.saliency_mask_fwd: fake kernel (the op has no gradient)."""

from __future__ import annotations

import torch

from .._register import forward_function, register_fakes
from .._spec import SALIENCY_MASK, Arguments


def _outputs(a: Arguments) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked images [B, C, H, W], keep [B, H, W] bool)."""
    images = a["images"]
    batch, _, height, width = images.shape
    keep = images.new_empty((batch, height, width), dtype=torch.bool)
    return images.new_empty(images.shape), keep


register_fakes(SALIENCY_MASK, "saliency_mask_fwd", _outputs)
saliency_mask = torch.no_grad()(forward_function(SALIENCY_MASK, "saliency_mask_fwd"))
