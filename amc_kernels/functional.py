"""The public functions: the math of each op, validation and dispatch to a backend.

Every function takes ``backend=None|"auto"|"reference"|"cpp"|"cuda"|"triton"`` (see
:mod:`amc_kernels._dispatch` for the precedence rules) and runs through :func:`run`: the op's
spec (:mod:`amc_kernels._spec`) validates the arguments and gives the defaults, the dispatcher
picks the implementation, which gets every argument by keyword. Arithmetic runs in fp32, or fp64
for fp64 inputs; losses return fp32 for fp16/bf16 inputs, other outputs keep the input dtype.
A batch of zero gives a zero loss or an empty output.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import _dispatch
from ._composite import LOWERINGS
from ._dispatch import Call
from ._spec import (
    AMC_LOSS,
    ANGULAR_DISTANCE,
    CGC_LOSS,
    CLASS_ACTIVATION_MAP,
    GRADCAM,
    OPS,
    SALIENCY_MASK,
    SUPCON_LOSS,
    OpSpec,
)

__all__ = list(OPS)  # one public function per op spec

#: The device types whose autocast state :func:`run` reads.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")

_amc, _supcon, _gradcam, _cgc, _saliency = (
    spec.defaults for spec in (AMC_LOSS, SUPCON_LOSS, GRADCAM, CGC_LOSS, SALIENCY_MASK)
)


def run(spec: OpSpec, backend: str | None, **arguments: Any) -> Any:
    """Validate `arguments` by `spec`, choose the backend from metadata only, and call it.

    Under ``torch.autocast`` for the inputs' device type, the floating tensor arguments are
    first cast to their widest dtype (autocast's "promote" rule) and the op runs with autocast
    off: the kernels compute in fp32 anyway, and nothing inside them is recast.
    """
    device_type = autocast_device_type(spec, arguments)
    if device_type is None:
        return _validated_call(spec, backend, arguments)
    with torch.autocast(device_type, enabled=False):
        return _validated_call(spec, backend, promoted(spec, arguments))


def autocast_device_type(spec: OpSpec, arguments: dict[str, Any]) -> str | None:
    """The device type of the first tensor argument if autocast is on for it, else None."""
    first = arguments.get(spec.tensors[0])
    if not isinstance(first, torch.Tensor) or first.device.type not in AUTOCAST_DEVICE_TYPES:
        return None
    return first.device.type if torch.is_autocast_enabled(first.device.type) else None


def promoted(spec: OpSpec, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with the floating tensors among the spec's tensors cast to their widest
    dtype (fp16 with bf16 gives fp32); other arguments unchanged."""
    floating = [
        name
        for name in spec.tensors
        if isinstance(arguments.get(name), torch.Tensor) and arguments[name].is_floating_point()
    ]
    if not floating:
        return arguments
    dtype = functools.reduce(torch.promote_types, (arguments[name].dtype for name in floating))
    return arguments | {name: arguments[name].to(dtype) for name in floating}


def _validated_call(spec: OpSpec, backend: str | None, arguments: dict[str, Any]) -> Any:
    arguments = spec.validate(arguments)
    lowering = LOWERINGS.get(spec.name)
    if lowering is None:
        return _dispatched(spec, backend, arguments)
    return lowering(arguments, lambda lowered: _dispatched(spec, backend, lowered))


def _dispatched(spec: OpSpec, backend: str | None, arguments: dict[str, Any]) -> Any:
    """The backend chosen for the validated `arguments` (frontend options removed), called."""
    tensors = [arguments[name] for name in spec.tensors if arguments[name] is not None]
    options = {o.name: arguments[o.name] for o in spec.options}
    shapes = tuple(tuple(t.shape) for t in tensors)
    call = Call(spec.name, tensors[0].device, tensors[0].dtype, shapes, options)
    return _dispatch.select(call, backend).fn(**arguments)


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
    return run(ANGULAR_DISTANCE, backend, x=x, y=y)


def amc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = _amc.margin,
    pairs: str = _amc.pairs,
    reduction: str = _amc.reduction,
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
            code: pairs (k, k + ⌊N/2⌋), k < ⌊N/2⌋; an odd last sample is unused). The
            default "all" differs from the official code and from the recipes' CLI
            (``--amc-pairs halves``): pass pairs="halves" to reproduce the paper's numbers.
        reduction: "mean" over pairs (0 with no pair), "sum", or "none": the [⌊N/2⌋] pair
            losses for "halves", the [N] per-anchor r_i = Σ_{j≠i} ℓ_ij / (N−1) for "all"
            (their mean equals the "mean" result).
    Returns:
        A scalar, or the vector above; fp32 for fp16/bf16 features.
    """
    return run(
        AMC_LOSS,
        backend,
        features=features,
        labels=labels,
        margin=margin,
        pairs=pairs,
        reduction=reduction,
    )


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor = _supcon.temperature,
    base_temperature: float = _supcon.base_temperature,
    contrast_mode: str = _supcon.contrast_mode,
    negatives: torch.Tensor | None = None,
    normalize: bool = _supcon.normalize,
    reduction: str = _supcon.reduction,
    no_positive: str = _supcon.no_positive,
    ignore_index: int | None = _supcon.ignore_index,
    backend: str | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020), as SupContrast's ``losses.py``.

    Contrast rows are the V views stacked view-major (row v·N + n), then the M ``negatives``
    rows, which only ever enter denominators. Anchors are every view row ("all", A = V·N)
    or view 0 ("one", A = N). With l_ac = ⟨z_a, z_c⟩ / T:
        loss_a = −(T / T_base) · mean_{c ∈ P(a)} [l_ac − log Σ_{c' ≠ a} exp(l_ac')],
    P(a) = the non-self view rows with the anchor's label (its other views when labels is
    None, i.e. SimCLR / NT-Xent). An anchor with no positive contributes 0 and still counts
    (``no_positive="count"``, SupContrast) or is left out of the mean (``"drop"``, as
    pytorch-metric-learning; 0 when no anchor has a positive).

    Args:
        features: [N, V, D] or [N, D] (V = 1).
        labels: [N] integers, or None.
        temperature: T > 0, a number or a 0-d tensor (learnable, e.g. an nn.Parameter: its
            gradient is exact). base_temperature: T_base > 0.
        contrast_mode: "all" or "one".
        negatives: [M, D] extra negatives (ExCon backgrounds, memory banks), or None.
        normalize: L2-normalise features and negatives (eps 1e-12) first.
        reduction: "mean" over anchors, "sum", or "none" ([A]).
        no_positive: "count" or "drop" (changes only the "mean").
        ignore_index: samples with this label take no part (neither anchors, positives nor
            negatives; zero gradient); "mean" is over the other anchors, "none" gives 0 at
            theirs. Needs labels; costs one host synchronisation (the kept count).
    Returns:
        A scalar or [A]; fp32 for fp16/bf16 features.
    """
    return run(
        SUPCON_LOSS,
        backend,
        features=features,
        labels=labels,
        negatives=negatives,
        temperature=temperature,
        base_temperature=base_temperature,
        contrast_mode=contrast_mode,
        normalize=normalize,
        reduction=reduction,
        no_positive=no_positive,
        ignore_index=ignore_index,
    )


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    *,
    weighting: str = _gradcam.weighting,
    relu: bool = _gradcam.relu,
    normalize: str | None = _gradcam.normalize,
    output_size: int | tuple[int, int] | None = _gradcam.output_size,
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
    return run(
        GRADCAM,
        backend,
        activations=activations,
        gradients=gradients,
        weighting=weighting,
        relu=relu,
        normalize=normalize,
        output_size=output_size,
    )


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
    return run(
        CLASS_ACTIVATION_MAP,
        backend,
        activations=activations,
        fc_weight=fc_weight,
        targets=targets,
    )


def cgc_loss(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    *,
    temperature: float | torch.Tensor = _cgc.temperature,
    size: int = _cgc.size,
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
        temperature: τ > 0, a number or a 0-d floating tensor on the maps' device (a
            learnable temperature, e.g. an nn.Parameter): with s_bj the cosines of row b
            (logits s_bj/τ, target j = 0) and p_b their softmax,
            ∂L/∂τ = −1/(B·τ²)·Σ_b Σ_j (p_bj − δ_j0)·s_bj, exact on every backend.
        size: the frame side (224 in the paper).
    Returns:
        A scalar (fp32 for fp16/bf16 maps), differentiable in both maps and a tensor τ.
    """
    return run(
        CGC_LOSS,
        backend,
        cam_orig=cam_orig,
        cam_aug=cam_aug,
        crops=crops,
        flips=flips,
        temperature=temperature,
        size=size,
    )


def saliency_mask(
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    threshold: float = _saliency.threshold,
    top_fraction: float | None = _saliency.top_fraction,
    fill: float = _saliency.fill,
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
    return run(
        SALIENCY_MASK,
        backend,
        images=images,
        saliency=saliency,
        threshold=threshold,
        top_fraction=top_fraction,
        fill=fill,
    )
