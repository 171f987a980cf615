"""torch.ops.amc_kernels.saliency_mask_fwd: fake kernel (the op has no gradient)."""

from __future__ import annotations

import torch

from .._register import forward_function
from .._spec import SALIENCY_MASK


@torch.library.register_fake("amc_kernels::saliency_mask_fwd")
def _(
    images: torch.Tensor,
    saliency: torch.Tensor,
    threshold: float,
    top_fraction: float,
    fill: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, height, width = images.shape
    keep = images.new_empty((batch, height, width), dtype=torch.bool)
    return images.new_empty(images.shape), keep


saliency_mask = torch.no_grad()(forward_function(SALIENCY_MASK, "saliency_mask_fwd"))
