"""Tiny inputs of every op whose exact results are written out by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import functional


@dataclass(frozen=True)
class ClosedForm:
    op: str
    name: str
    run: Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]  # (got, expected), fp64


def _t(values: object, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _angular_distance(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Unit vectors at 0, π/3 and π/2 (the last with norm 2): θ is the angle between them.
    x = _t([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0]], device)
    self_angle = math.acos(1 - 1e-7)  # the clamp keeps θ_ii away from 0
    p = math.pi
    expected = [[self_angle, p / 3, p / 2], [p / 3, self_angle, p / 6], [p / 2, p / 6, self_angle]]
    return functional.angular_distance(x, backend="reference"), _t(expected, device)


def _amc_halves(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Pairs (0, 2) at π/2 with equal labels, (1, 3) at π/4 with different labels, margin 1.
    x = _t([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]], device)
    labels = _t([0, 1, 0, 2], device, torch.long)
    got = functional.amc_loss(x, labels, margin=1.0, pairs="halves", backend="reference")
    return got, _t(((math.pi / 2) ** 2 + (1 - math.pi / 4) ** 2) / 2, device)


def _amc_all(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Angles 0, 0.3, π/2; labels 0, 0, 1; margin 1.5:
    # ℓ01 = 0.3², ℓ02 = 0, ℓ12 = (1.5 − (π/2 − 0.3))².
    x = _t([[1.0, 0.0], [math.cos(0.3), math.sin(0.3)], [0.0, 1.0]], device)
    labels = _t([0, 0, 1], device, torch.long)
    got = functional.amc_loss(x, labels, margin=1.5, pairs="all", backend="reference")
    return got, _t((0.3**2 + (1.5 - (math.pi / 2 - 0.3)) ** 2) / 3, device)


def _supcon(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # z = e1, e2, −e1 with labels 0, 0, 1 and T = T_base = 1. Anchor 0: −log(e⁰/(e⁰ + e⁻¹)),
    # anchor 1: −log(e⁰/(e⁰ + e⁰)), anchor 2 has no positive (0); mean over 3 anchors.
    x = _t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], device)
    labels = _t([0, 0, 1], device, torch.long)
    got = functional.supcon_loss(
        x, labels, temperature=1.0, base_temperature=1.0, backend="reference"
    )
    return got, _t((math.log(1 + math.exp(-1)) + math.log(2)) / 3, device)


def _gradcam_maps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    activations = _t([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]], device)
    return activations, _t([[[1.0, 0.0], [1.0, 4.0]]], device)  # A₀ − 2·A₁


def _gradcam(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # α = (mean G₀, mean G₁) = (1, −2), so raw = A₀ − 2A₁; "max" divides by 4 + 1e-8.
    activations, raw = _gradcam_maps(device)
    gradients = torch.stack([torch.ones(2, 2), torch.tensor([[-4.0, 0.0], [0.0, -4.0]])])[None]
    got = functional.gradcam(
        activations, gradients.to(activations), normalize="max", backend="reference"
    )
    return got, raw / (4 + 1e-8)


def _class_activation_map(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # W[0] = (1, −2): CAM = (A₀ − 2A₁) / (H·W).
    activations, raw = _gradcam_maps(device)
    weight = _t([[1.0, -2.0], [0.0, 1.0]], device)
    got = functional.class_activation_map(
        activations, weight, _t([0], device, torch.long), backend="reference"
    )
    return got, raw / 4


def _cgc(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Constant maps: every û and v̂ is the same vector, all logits are 1/τ, the loss is log B.
    cams = torch.ones(3, 4, 4, dtype=torch.float64, device=device)
    crops = _t([[0, 0, 16, 16], [2, 3, 8, 5], [0, 8, 16, 8]], device, torch.long)
    flips = _t([False, True, False], device, torch.bool)
    got = functional.cgc_loss(cams, 2 * cams, crops, flips, size=16, backend="reference")
    return got, _t(math.log(3), device)


def _saliency_mask(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Saliency 0, 1, 2, 3 at the image size: e = 0, 1/3, 2/3, 1, so e > 0.5 keeps the last two.
    images = _t([[[[1.0, 2.0], [3.0, 4.0]]]], device)
    saliency = _t([[[0.0, 1.0], [2.0, 3.0]]], device)
    masked, _ = functional.saliency_mask(images, saliency, fill=-1.0, backend="reference")
    return masked, _t([[[[-1.0, -1.0], [3.0, 4.0]]]], device)


def closed_form_cases() -> list[ClosedForm]:
    return [
        ClosedForm("angular_distance", "angles 0, π/3, π/2", _angular_distance),
        ClosedForm("amc_loss", "halves, π/2 and π/4", _amc_halves),
        ClosedForm("amc_loss", "all pairs, three angles", _amc_all),
        ClosedForm("supcon_loss", "three unit vectors", _supcon),
        ClosedForm("gradcam", "mean weights, max norm", _gradcam),
        ClosedForm("class_activation_map", "two channels", _class_activation_map),
        ClosedForm("cgc_loss", "constant maps give log B", _cgc),
        ClosedForm("saliency_mask", "threshold 0.5", _saliency_mask),
    ]
