"""torch.ops.amc_kernels.saliency_mask_fwd: fake kernel and the cpp/cuda backends (no gradient)."""

from __future__ import annotations

import torch

from ._common import register_compiled

OP = "saliency_mask"


@torch.no_grad()
def saliency_mask(
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's signature on the compiled kernel (top_fraction None is −1)."""
    fraction = -1.0 if top_fraction is None else float(top_fraction)
    return torch.ops.amc_kernels.saliency_mask_fwd(
        images, saliency, float(threshold), fraction, float(fill)
    )


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


register_compiled(OP, saliency_mask)
