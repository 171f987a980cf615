"""Batched metrics of accuracy, calibration and explanation quality
(docs/design.md#28-modules-and-helpers).

Notation: a batch of B images [B, C, H, W], saliency maps [B, h, w] (Grad-CAM, CAM, ...), object
masks [B, H, W] bool. Maps at another resolution than the image are resized bilinearly
(align_corners=False) to H×W first. Per-image metrics return [B] tensors so that callers can
average over any subset; the scalar ones return Python floats.

- accuracy = mean_b 1[argmax_c logits_bc = y_b].
- ECE (M = 10 equal-width bins of the confidence p̂_b = max_c softmax_bc, bin m = (m−1/M, m/M]):
  ECE = Σ_m |B_m|/B · |acc(B_m) − conf(B_m)|, as netcal's ECE used by ExCon.
- content heatmap (CGC, TorchRay's energy inside the box): with c = max(up(s), 0),
  CH_b = Σ_{p ∈ mask_b} c_bp / Σ_p c_bp; NaN for an all-zero map (the protocol skips those).
- pointing game: hit_b = 1[argmax_p up(s_b) lies within ``tolerance`` pixels (Euclidean) of
  mask_b]; the first maximum in row-major order wins ties.
- insertion / deletion (RISE): pixels are ranked by up(s) (descending, ties to the lower index);
  step i = 0..n replaces the first i·step of them (n = ⌈HW/step⌉) — insertion starts from the
  substrate (a blurred copy) and copies in the image, deletion starts from the image and copies
  in the substrate. Scores are softmax probabilities of the target class (default: the top-1
  class on the clean image), and AUC = (Σ_i score_i − score_0/2 − score_n/2) / n, the trapezoid
  rule on [0, 1].
- Average Drop / Increase (ExCon): keep the top 15 % of pixels (:func:`amc_kernels.saliency_mask`,
  the rest set to ``fill``), p = softmax(model(x))_t, p' = softmax(model(masked x))_t with t the
  predicted class; drop_b = max(0, p − p') / p, increase_b = 1[p' > p].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .functional import saliency_mask

__all__ = [
    "accuracy",
    "average_drop_increase",
    "causal_auc",
    "causal_scores",
    "content_heatmap",
    "expected_calibration_error",
    "gaussian_blur",
    "insertion_deletion_auc",
    "pointing_game",
]

Model = Callable[[torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits [N, C] against labels [N] (0 for N = 0)."""
    if labels.numel() == 0:
        return 0.0
    return (logits.argmax(dim=1) == labels).float().mean().item()


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10
) -> float:
    """ECE in [0, 1] of class probabilities [N, C] against labels [N], ``bins`` equal bins."""
    if labels.numel() == 0:
        return 0.0
    confidence, predicted = probabilities.float().max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=confidence.device)[1:-1]
    index = torch.bucketize(confidence, edges)  # bin m holds (edges[m-1], edges[m]]
    gap = torch.zeros(bins, device=confidence.device).index_add_(0, index, correct - confidence)
    return (gap.abs().sum() / labels.numel()).item()


def _to_size(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    saliency = saliency.float()
    if tuple(saliency.shape[-2:]) == size:
        return saliency
    return F.interpolate(saliency[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def content_heatmap(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B] fraction of the (ReLU'd, resized) saliency mass inside each mask; NaN for zero maps."""
    mass = _to_size(saliency, tuple(masks.shape[-2:])).clamp_min(0).flatten(1)
    total = mass.sum(dim=1)
    inside = (mass * masks.flatten(1).float()).sum(dim=1)
    return torch.where(total > 0, inside / total, torch.full_like(total, math.nan))


def pointing_game(saliency: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """[B] 1.0 where the saliency maximum lies within ``tolerance`` pixels of the mask, else 0.0."""
    height, width = masks.shape[-2:]
    peak = _to_size(saliency, (height, width)).flatten(1).argmax(dim=1)
    target = masks.float()[:, None]
    if tolerance > 0:
        offsets = torch.arange(-tolerance, tolerance + 1, device=masks.device, dtype=torch.float32)
        disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()
        target = F.conv2d(target, disc[None, None], padding=tolerance)
    hit = target.flatten(1).gather(1, peak[:, None])[:, 0] > 0
    return hit.float()


def gaussian_blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with zero padding, as RISE's substrate (11, σ = 5).

    Zero is the dataset's mean colour for normalised images.
    """
    radius = kernel_size // 2
    x = torch.arange(kernel_size, device=images.device, dtype=torch.float32) - radius
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(images, rows, padding=(radius, 0), groups=channels)
    return F.conv2d(out, rows.transpose(2, 3), padding=(0, radius), groups=channels)


@torch.no_grad()
def causal_scores(
    model: Model,
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    mode: str,
    step: int,
    substrate: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, n+1] target-class probabilities along RISE's insertion or deletion game.

    ``mode`` "insertion" or "deletion"; ``step`` pixels per step; ``substrate`` [B, C, H, W]
    defaults to :func:`gaussian_blur` of the images; ``targets`` default to the top-1 class.
    """
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"causal_scores: mode must be 'insertion' or 'deletion', got {mode!r}")
    if step < 1:
        raise ValueError(f"causal_scores: step must be ≥ 1 pixel, got {step}")
    batch, _, height, width = images.shape
    if substrate is None:
        substrate = gaussian_blur(images)
    if targets is None:
        targets = model(images).argmax(dim=1)
    order = torch.sort(
        _to_size(saliency, (height, width)).flatten(1), dim=1, descending=True, stable=True
    ).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(height * width, device=order.device).expand(batch, -1)
    )
    rank = rank.view(batch, 1, height, width)
    start, finish = (substrate, images) if mode == "insertion" else (images, substrate)
    scores = []
    for i in range(-(-height * width // step) + 1):
        mixed = torch.where(rank < i * step, finish, start)
        probabilities = model(mixed).float().softmax(dim=1)
        scores.append(probabilities.gather(1, targets[:, None])[:, 0])
    return torch.stack(scores, dim=1)


def causal_auc(scores: torch.Tensor) -> torch.Tensor:
    """[B] trapezoid-rule area of [B, n+1] equally spaced scores over [0, 1] (RISE's ``auc``)."""
    if scores.shape[1] < 2:
        raise ValueError(f"causal_auc: scores need at least 2 points, got {scores.shape[1]}")
    total = scores.sum(dim=1) - scores[:, 0] / 2 - scores[:, -1] / 2
    return total / (scores.shape[1] - 1)


def insertion_deletion_auc(
    model: Model,
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    step: int,
    substrate: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] insertion AUC, [B] deletion AUC): higher insertion and lower deletion are better."""
    if substrate is None:
        substrate = gaussian_blur(images)
    if targets is None:
        with torch.no_grad():
            targets = model(images).argmax(dim=1)
    common = {"step": step, "substrate": substrate, "targets": targets}
    insertion = causal_scores(model, images, saliency, mode="insertion", **common)
    deletion = causal_scores(model, images, saliency, mode="deletion", **common)
    return causal_auc(insertion), causal_auc(deletion)


@torch.no_grad()
def average_drop_increase(
    model: Model,
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    top_fraction: float = 0.15,
    fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] drop max(0, p − p')/p, [B] increase 1[p' > p]) for the top-15 % masked images."""
    clean = model(images).float().softmax(dim=1)
    if targets is None:
        targets = clean.argmax(dim=1)
    masked, _ = saliency_mask(
        images, saliency.to(images.dtype), top_fraction=top_fraction, fill=fill
    )
    kept = model(masked).float().softmax(dim=1)
    p = clean.gather(1, targets[:, None])[:, 0]
    p_masked = kept.gather(1, targets[:, None])[:, 0]
    return (p - p_masked).clamp_min(0) / p, (p_masked > p).float()
