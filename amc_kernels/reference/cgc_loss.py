"""Reference: the Contrastive Grad-CAM Consistency loss, literally at size × size
(docs/design.md#26-cgc_loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import Call
from ._common import normalize_rows, upcast
from .gradcam import normalize_maps, resize_maps


def refusals(call: Call) -> list[str]:
    """The literal pipeline slices each map at the values of crops, which meta tensors lack."""
    if call.device.type == "meta":
        return ["crops each map at the values of crops, which meta tensors do not have"]
    return []


def transform_map(sal: torch.Tensor, crop: list[int], flip: bool, size: int) -> torch.Tensor:
    """flip(resize_size(crop(sal))) for one [size, size] map; crop = (i, j, ch, cw)."""
    i, j, ch, cw = crop
    window = sal[i : i + ch, j : j + cw]
    resized = resize_maps(window[None], (size, size))[0]
    return resized.flip(-1) if flip else resized


def cgc_loss(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    size: int,
) -> torch.Tensor:
    """CGC's NCE loss between transformed original maps and augmented-view maps.

    cam_orig, cam_aug: [B, h, w] ReLU'd maps; crops: [B, 4] (i, j, ch, cw) in the size×size
    frame; flips: [B] bool. With s(c) = up(c) / (Σ up(c) + 1e-8) + 1e-8 and up the bilinear
    resize to size×size: u_b = flip_b(resize(crop_b(s(cam_orig_b)))), v_b = s(cam_aug_b),
    û, v̂ flattened and L2-normalised, logits_b = [⟨û_b, v̂_b⟩, ⟨v̂_b, v̂_j⟩ for j ≠ b] / τ,
    loss = mean_b CE(logits_b, 0). Returns a scalar (fp32 for fp16/bf16 inputs).
    """

    def saliency(cam: torch.Tensor) -> torch.Tensor:
        return normalize_maps(resize_maps(upcast(cam), (size, size)), "sum")

    batch = cam_orig.shape[0]
    if batch == 0:
        return upcast(cam_orig).sum() + upcast(cam_aug).sum()
    orig = saliency(cam_orig)
    crop_list, flip_list = crops.tolist(), flips.tolist()
    u = torch.stack(
        [transform_map(orig[b], crop_list[b], flip_list[b], size) for b in range(batch)]
    )
    u_hat = normalize_rows(u.flatten(1))
    v_hat = normalize_rows(saliency(cam_aug).flatten(1))
    positive = (u_hat * v_hat).sum(dim=1, keepdim=True)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=v_hat.device)
    negatives = (v_hat @ v_hat.T)[off_diagonal].view(batch, batch - 1)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    target = torch.zeros(batch, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)
