"""Reference: batched Grad-CAM reduction with resizing and normalisation
(docs/design.md#24-gradcam)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._spec import MAP_EPS
from ._common import upcast


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of [B, h, w] maps to [B, *size], align_corners=False."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalize_maps(maps: torch.Tensor, mode: str | None) -> torch.Tensor:
    """Per-map normalisation of [B, H, W] maps.

    None: unchanged; "max": x / (max + 1e-8); "minmax": (x − min) / (max(x − min) + 1e-8);
    "sum": x / (Σx + 1e-8) + 1e-8.
    """
    if mode is None:
        return maps
    if mode == "max":
        return maps / (maps.amax(dim=(1, 2), keepdim=True) + MAP_EPS)
    if mode == "minmax":
        shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
        return shifted / (shifted.amax(dim=(1, 2), keepdim=True) + MAP_EPS)
    return maps / (maps.sum(dim=(1, 2), keepdim=True) + MAP_EPS) + MAP_EPS


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    *,
    weighting: str,
    relu: bool,
    normalize: str | None,
    output_size: tuple[int, int] | None,
) -> torch.Tensor:
    """Grad-CAM maps from activations A and gradients G = ∂score/∂A, both [B, K, H, W].

    weighting="mean": raw_b = Σ_k α_bk·A_bk with α_bk = mean_hw G_bkhw (Grad-CAM);
    weighting="elementwise": raw_b = Σ_k G_bk ⊙ A_bk (CGC's code).
    Then, in order: ReLU (if relu), bilinear resize to output_size (align_corners=False),
    normalize (see normalize_maps). Returns [B, H', W'] in the dtype of `activations`.
    """
    a, g = upcast(activations), upcast(gradients)
    if weighting == "mean":
        maps = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)
    else:
        maps = (g * a).sum(dim=1)
    if relu:
        maps = maps.relu()
    if output_size is not None:
        maps = resize_maps(maps, output_size)
    return normalize_maps(maps, normalize).to(activations.dtype)
