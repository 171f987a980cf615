"""The public functions: validation, the math of each op, and dispatch to a backend.

Every function takes ``backend=None|"auto"|"reference"|"cpp"|"cuda"|"triton"`` (see
:mod:`amc_kernels._dispatch` for the precedence rules). Arithmetic runs in fp32, or fp64 for
fp64 inputs; losses return fp32 for fp16/bf16 inputs, other outputs keep the input dtype.
A batch of zero gives a zero loss or an empty output.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _checks as check
from . import _dispatch, reference
from ._dispatch import Call

__all__ = [
    "amc_loss",
    "angular_distance",
    "cgc_loss",
    "class_activation_map",
    "gradcam",
    "saliency_mask",
    "supcon_loss",
]

REDUCTIONS = ("mean", "sum", "none")
GRADCAM_NORMALIZATIONS = (None, "max", "minmax", "sum")

for _op in __all__:
    _dispatch.register(_op, "reference", getattr(reference, _op))


def _dispatch_call(
    op: str, backend: str | None, tensors: list[torch.Tensor], options: dict[str, Any]
) -> Any:
    first = tensors[0]
    call = Call(op, first.device, first.dtype, tuple(tuple(t.shape) for t in tensors), options)
    return _dispatch.select(call, backend).fn


def _check_features(
    op: str, name: str, x: object, dims: tuple[int, ...], layout: str
) -> torch.Tensor:
    x = check.floating(op, name, x)
    check.ndim(op, name, x, dims, layout)
    return x


def _check_labels(op: str, labels: object, features: torch.Tensor) -> torch.Tensor:
    labels = check.integer(op, "labels", labels)
    check.ndim(op, "labels", labels, (1,), "[N]")
    check.size(op, "labels", labels, 0, features.shape[0], "one label per sample of features")
    check.same_device(op, "labels", labels, "features", features)
    return labels


def angular_distance(
    x: torch.Tensor, y: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Pairwise angular distance in radians.

    θ_ij = arccos(clamp(⟨x̂_i, ŷ_j⟩, −1+δ, 1−δ)), x̂ = x / max(‖x‖, 1e-12), δ = 1e-7 (the
    official AMC clip). The gradient is zero outside the clamp and finite everywhere.

    Args:
        x: [N, D] floating tensor.
        y: [M, D], same dtype and device; None means y = x.
    Returns:
        [N, M] in x's dtype.
    """
    op = "angular_distance"
    x = _check_features(op, "x", x, (2,), "[N, D]")
    tensors = [x]
    if y is not None:
        y = _check_features(op, "y", y, (2,), "[M, D]")
        check.same_device(op, "y", y, "x", x)
        check.same_dtype(op, "y", y, "x", x)
        check.size(op, "y", y, 1, x.shape[1], "the feature size D of x")
        tensors.append(y)
    for name, t in zip(("x", "y"), tensors, strict=False):
        check.finite_values(op, name, t)
    return _dispatch_call(op, backend, tensors, {})(x, y)


def amc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.5,
    pairs: str = "all",
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Angular Margin Contrastive loss (Choi, Som and Turaga, 2020).

    With θ_ij the angular distance of the L2-normalised features and S_ij = 1[y_i == y_j]:
        ℓ_ij = S_ij·θ_ij² + (1 − S_ij)·max(0, m − θ_ij)².

    Args:
        features: [N, D], un-normalised (normalised inside).
        labels: [N] integers. The official recipe passes the network's detached predictions.
        margin: m > 0 in radians.
        pairs: "all" (every i < j, the fused O(N)-memory form) or "halves" (the official
            code: pairs (k, k + ⌊N/2⌋), k < ⌊N/2⌋; an odd last sample is unused).
        reduction: "mean" over pairs (0 with no pair), "sum", or "none": the [⌊N/2⌋] pair
            losses for "halves", the [N] per-anchor r_i = Σ_{j≠i} ℓ_ij / (N−1) for "all"
            (their mean equals the "mean" result).
    Returns:
        A scalar, or the vector above; fp32 for fp16/bf16 features.
    """
    op = "amc_loss"
    features = _check_features(op, "features", features, (2,), "[N, D]")
    labels = _check_labels(op, labels, features)
    margin = check.positive(op, "margin", margin)
    check.choice(op, "pairs", pairs, ("all", "halves"))
    check.choice(op, "reduction", reduction, REDUCTIONS)
    check.finite_values(op, "features", features)
    options = {"margin": margin, "pairs": pairs, "reduction": reduction}
    fn = _dispatch_call(op, backend, [features, labels], options)
    return fn(features, labels, **options)


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    negatives: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020), as SupContrast's ``losses.py``.

    Contrast rows are the V views stacked view-major (row v·N + n), then the M ``negatives``
    rows, which only ever enter denominators. Anchors are every view row ("all", A = V·N)
    or view 0 ("one", A = N). With l_ac = ⟨z_a, z_c⟩ / T:
        loss_a = −(T / T_base) · mean_{c ∈ P(a)} [l_ac − log Σ_{c' ≠ a} exp(l_ac')],
    P(a) = the non-self view rows with the anchor's label (its other views when labels is
    None, i.e. SimCLR / NT-Xent). An anchor with no positive contributes 0 and still counts.

    Args:
        features: [N, V, D] or [N, D] (V = 1).
        labels: [N] integers, or None.
        temperature, base_temperature: T > 0 and T_base > 0.
        contrast_mode: "all" or "one".
        negatives: [M, D] extra negatives (ExCon backgrounds, memory banks), or None.
        normalize: L2-normalise features and negatives (eps 1e-12) first.
        reduction: "mean" over anchors, "sum", or "none" ([A]).
    Returns:
        A scalar or [A]; fp32 for fp16/bf16 features.
    """
    op = "supcon_loss"
    features = _check_features(op, "features", features, (2, 3), "[N, V, D] or [N, D]")
    if features.dim() == 3 and features.shape[1] == 0:
        raise ValueError(f"{op}: features must have at least one view, got shape [N, 0, D]")
    tensors = [features]
    if labels is not None:
        tensors.append(_check_labels(op, labels, features))
    check.positive(op, "temperature", temperature)
    check.positive(op, "base_temperature", base_temperature)
    check.choice(op, "contrast_mode", contrast_mode, ("all", "one"))
    check.choice(op, "normalize", normalize, (True, False))
    check.choice(op, "reduction", reduction, REDUCTIONS)
    if negatives is not None:
        negatives = _check_features(op, "negatives", negatives, (2,), "[M, D]")
        check.same_device(op, "negatives", negatives, "features", features)
        check.same_dtype(op, "negatives", negatives, "features", features)
        check.size(op, "negatives", negatives, 1, features.shape[-1], "the feature size D")
        check.finite_values(op, "negatives", negatives)
        tensors.append(negatives)
    check.finite_values(op, "features", features)
    options = {
        "temperature": float(temperature),
        "base_temperature": float(base_temperature),
        "contrast_mode": contrast_mode,
        "normalize": normalize,
        "reduction": reduction,
    }
    fn = _dispatch_call(op, backend, tensors, {**options, "labels": labels is not None})
    return fn(features, labels, negatives=negatives, **options)


def _check_maps(
    op: str, name: str, x: object, other_name: str, other: torch.Tensor
) -> torch.Tensor:
    x = _check_features(op, name, x, (other.dim(),), str(list(other.shape)) + f" (as {other_name})")
    check.same_device(op, name, x, other_name, other)
    check.same_dtype(op, name, x, other_name, other)
    if x.shape != other.shape:
        raise ValueError(
            f"{op}: {name} must have the shape of {other_name}, {tuple(other.shape)}; "
            f"got {tuple(x.shape)}"
        )
    return x


def _check_pixels(op: str, name: str, x: torch.Tensor) -> None:
    """Maps are resampled and normalised over their pixels: height and width must be ≥ 1."""
    if 0 in x.shape[-2:]:
        raise ValueError(
            f"{op}: {name} must have a height and a width of at least 1 pixel, "
            f"got shape {tuple(x.shape)}"
        )


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    *,
    weighting: str = "mean",
    relu: bool = True,
    normalize: str | None = None,
    output_size: int | tuple[int, int] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Batched Grad-CAM from a layer's activations A and gradients G = ∂score/∂A.

    weighting="mean" (Grad-CAM): raw_b = Σ_k α_bk·A_bk, α_bk = mean_hw G_bkhw.
    weighting="elementwise" (CGC's code): raw_b = Σ_k G_bk ⊙ A_bk.
    Then ReLU (``relu``; captum's default, used by ExCon, is no ReLU), bilinear resize to
    ``output_size`` (align_corners=False), and per-map ``normalize``: None, "max":
    x / (max + 1e-8), "minmax": (x − min) / (max(x − min) + 1e-8) (ExCon), "sum":
    x / (Σx + 1e-8) + 1e-8 (CGC). Differentiable in A and G, twice where the backend allows.

    Args:
        activations, gradients: [B, K, H, W], same dtype and device.
        output_size: int or (H', W'); None keeps (H, W).
    Returns:
        [B, H', W'] in the activations' dtype.
    """
    op = "gradcam"
    activations = _check_features(op, "activations", activations, (4,), "[B, K, H, W]")
    _check_pixels(op, "activations", activations)
    gradients = _check_maps(op, "gradients", gradients, "activations", activations)
    check.choice(op, "weighting", weighting, ("mean", "elementwise"))
    check.choice(op, "relu", relu, (True, False))
    check.choice(op, "normalize", normalize, GRADCAM_NORMALIZATIONS)
    size = None if output_size is None else check.size_pair(op, "output_size", output_size)
    check.finite_values(op, "activations", activations)
    check.finite_values(op, "gradients", gradients)
    options = {"weighting": weighting, "relu": relu, "normalize": normalize, "output_size": size}
    fn = _dispatch_call(op, backend, [activations, gradients], options)
    return fn(activations, gradients, **options)


def class_activation_map(
    activations: torch.Tensor,
    fc_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Class activation maps of a GAP → Linear head: CAM_b = Σ_k W[t_b, k]·A_bk / (H·W).

    At the layer feeding the pooling this equals Grad-CAM of the logit t_b (both weightings,
    before the ReLU), so it gives CGC's training signal without a double backward.

    Args:
        activations: [B, K, H, W].
        fc_weight: [C, K], the linear head's weight; same dtype and device.
        targets: [B] integers in [0, C).
    Returns:
        [B, H, W] in the activations' dtype; differentiable in activations and fc_weight.
    """
    op = "class_activation_map"
    activations = _check_features(op, "activations", activations, (4,), "[B, K, H, W]")
    fc_weight = _check_features(op, "fc_weight", fc_weight, (2,), "[C, K]")
    check.same_device(op, "fc_weight", fc_weight, "activations", activations)
    check.same_dtype(op, "fc_weight", fc_weight, "activations", activations)
    check.size(op, "fc_weight", fc_weight, 1, activations.shape[1], "the channels K of activations")
    targets = check.integer(op, "targets", targets)
    check.ndim(op, "targets", targets, (1,), "[B]")
    check.size(op, "targets", targets, 0, activations.shape[0], "one target per map")
    check.same_device(op, "targets", targets, "activations", activations)
    check.index_values(op, "targets", targets, fc_weight.shape[0], "the classes C of fc_weight")
    check.finite_values(op, "activations", activations)
    check.finite_values(op, "fc_weight", fc_weight)
    fn = _dispatch_call(op, backend, [activations, fc_weight, targets], {})
    return fn(activations, fc_weight, targets)


def _check_crops(
    op: str, crops: object, batch: int, size: int, device: torch.device
) -> torch.Tensor:
    crops = check.integer(op, "crops", crops, "(i, j, height, width) crop boxes")
    check.ndim(op, "crops", crops, (2,), "[B, 4]")
    check.size(op, "crops", crops, 0, batch, "one crop per map")
    check.size(op, "crops", crops, 1, 4, "(i, j, height, width)")
    if crops.device != device:
        raise ValueError(f"{op}: crops is on {crops.device} but the maps are on {device}")
    if check.value_checks_enabled() and batch:
        top, left, height, width = crops.long().unbind(1)
        inside = (top >= 0) & (left >= 0) & (height >= 1) & (width >= 1)
        inside &= (top + height <= size) & (left + width <= size)
        if not bool(inside.all()):
            bad = int((~inside).nonzero()[0, 0])
            raise ValueError(
                f"{op}: crops[{bad}] = {crops[bad].tolist()} is outside the {size}×{size} frame; "
                f"each (i, j, h, w) needs i, j ≥ 0, h, w ≥ 1, i + h ≤ size and j + w ≤ size"
            )
    return crops


def cgc_loss(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    *,
    temperature: float = 0.5,
    size: int = 224,
    backend: str | None = None,
) -> torch.Tensor:
    """Contrastive Grad-CAM Consistency loss (Pillai et al., CVPR 2022), as the official code.

    With up(c) the bilinear resize to size×size and s(c) = up(c) / (Σ up(c) + 1e-8) + 1e-8:
    u_b = flip_b(resize_size(crop_b(s(cam_orig_b)))), v_b = s(cam_aug_b); û, v̂ flattened and
    L2-normalised; logits_b = [⟨û_b, v̂_b⟩, ⟨v̂_b, v̂_j⟩ for j ≠ b] / τ (the negatives are
    anchored on v̂_b, as in the code); loss = mean_b CE(logits_b, 0).

    Args:
        cam_orig, cam_aug: [B, h, w] ReLU'd maps of the original and augmented views.
        crops: [B, 4] integers (i, j, ch, cw): rows i..i+ch, cols j..j+cw of the size frame.
        flips: [B] bool, horizontal flip after the crop.
        temperature: τ > 0.  size: the frame side (224 in the paper).
    Returns:
        A scalar (fp32 for fp16/bf16 maps), differentiable in both maps.
    """
    op = "cgc_loss"
    cam_orig = _check_features(op, "cam_orig", cam_orig, (3,), "[B, h, w]")
    _check_pixels(op, "cam_orig", cam_orig)
    cam_aug = _check_maps(op, "cam_aug", cam_aug, "cam_orig", cam_orig)
    temperature = check.positive(op, "temperature", temperature)
    size = check.positive_int(op, "size", size)
    batch = cam_orig.shape[0]
    crops = _check_crops(op, crops, batch, size, cam_orig.device)
    flips = check.boolean(op, "flips", flips)
    check.ndim(op, "flips", flips, (1,), "[B]")
    check.size(op, "flips", flips, 0, batch, "one flag per map")
    check.same_device(op, "flips", flips, "cam_orig", cam_orig)
    check.finite_values(op, "cam_orig", cam_orig)
    check.finite_values(op, "cam_aug", cam_aug)
    options = {"temperature": temperature, "size": size}
    fn = _dispatch_call(op, backend, [cam_orig, cam_aug, crops, flips], options)
    return fn(cam_orig, cam_aug, crops, flips, **options)


def saliency_mask(
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    fill: float = 0.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ExCon's masked view: keep the salient pixels, set the others to ``fill``.

    The saliency is resized bilinearly to the image size and min–max normalised per image,
    e = (s − min) / (max(s − min) + 1e-8). Kept pixels: e > threshold, or, with
    ``top_fraction`` f, the ⌊f·H·W + ½⌋ most salient pixels (ties to the lower index;
    ExCon's Average Drop uses f = 0.15). ``fill`` = 0 in normalised space is the mean colour.

    Args:
        images: [B, C, H, W].  saliency: [B, h, w], on the same device.
    Returns:
        (masked images [B, C, H, W] in the images' dtype, keep mask [B, H, W] bool).
        Not differentiable.
    """
    op = "saliency_mask"
    images = _check_features(op, "images", images, (4,), "[B, C, H, W]")
    saliency = _check_features(op, "saliency", saliency, (3,), "[B, h, w]")
    check.size(op, "saliency", saliency, 0, images.shape[0], "one map per image")
    _check_pixels(op, "images", images)
    _check_pixels(op, "saliency", saliency)
    check.same_device(op, "saliency", saliency, "images", images)
    threshold = check.real(op, "threshold", threshold)
    if top_fraction is not None:
        top_fraction = check.in_range(op, "top_fraction", top_fraction, 0.0, 1.0)
    fill = check.real(op, "fill", fill)
    check.finite_values(op, "saliency", saliency)
    options = {"threshold": threshold, "top_fraction": top_fraction, "fill": fill}
    fn = _dispatch_call(op, backend, [images, saliency], options)
    return fn(images, saliency, **options)
