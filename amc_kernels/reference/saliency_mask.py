"""Reference: ExCon's saliency-masked view (docs/design.md#27-saliency_mask)."""

from __future__ import annotations

import torch

from ._common import upcast
from .gradcam import normalize_maps, resize_maps


def kept_pixel_count(top_fraction: float, num_pixels: int) -> int:
    """k = ⌊f·H·W + ½⌋: the pixel count that `top_fraction` keeps (round half up)."""
    return int(top_fraction * num_pixels + 0.5)


@torch.no_grad()
def saliency_mask(
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    threshold: float,
    top_fraction: float | None,
    fill: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the non-salient pixels of images [B, C, H, W] given saliency [B, h, w].

    e = minmax(bilinear(saliency → H×W)) per image, (s − min) / (max(s − min) + 1e-8).
    Kept pixels: e > threshold, or with top_fraction = f the k = ⌊f·H·W + ½⌋ most salient
    (ties go to the lower flat index). Others become `fill` in every channel.
    Returns (masked_images [B, C, H, W] in the images' dtype, keep_mask [B, H, W] bool).
    Not differentiable.
    """
    batch, _, height, width = images.shape
    e = normalize_maps(resize_maps(upcast(saliency), (height, width)), "minmax")
    if top_fraction is None:
        keep = e > threshold
    else:
        k = kept_pixel_count(top_fraction, height * width)
        order = torch.sort(e.flatten(1), dim=1, descending=True, stable=True).indices
        keep = torch.zeros(batch, height * width, dtype=torch.bool, device=images.device)
        keep.scatter_(1, order[:, :k], True)
        keep = keep.view(batch, height, width)
    masked = torch.where(keep[:, None], images, torch.full_like(images, fill))
    return masked, keep
