"""Reference: class activation maps of a GAP → Linear head
(docs/design.md#25-class_activation_map)."""

from __future__ import annotations

import torch

from ._common import upcast


def class_activation_map(
    activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """CAM_b = Σ_k W[t_b, k]·A_bk / (H·W).

    activations: [B, K, H, W]; fc_weight: [C, K]; targets: [B] integers in [0, C).
    Returns [B, H, W] in the dtype of `activations`. Equals Grad-CAM (either weighting, before
    the ReLU) at the layer that feeds global average pooling and the linear head.
    """
    a = upcast(activations)
    height, width = a.shape[-2:]
    # .long(): int8/int16 cannot index, and uint8 would index as a boolean mask.
    weights = upcast(fc_weight)[targets.to(device=a.device, dtype=torch.long)]
    cam = torch.einsum("bk,bkhw->bhw", weights, a) / (height * width)
    return cam.to(activations.dtype)
