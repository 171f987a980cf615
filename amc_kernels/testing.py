"""Test helpers shared by python_tests/ and ``amc-kernels check``, read off the op specs.

* :func:`closed_form_cases`: tiny inputs whose exact results are written out by hand.
* :func:`make_inputs`: seeded random arguments of an op, by name (every tensor and option of
  its :class:`~amc_kernels._spec.OpSpec`), on any device and dtype, for any batch (0 included),
  in one of the op's named sample variants (:func:`variants`): the option combinations and
  shapes, larger than one tile, that every backend must reproduce (like torchvision's
  RoIOpTester or OpInfo's sample inputs).
* :func:`compare_backend`: a backend against the reference, forward and gradients, under the
  low-precision rule of docs/design.md#7-tests: its error against the fp64 reference is at most
  twice the
  error of the same-dtype reference, plus a floor. Keep masks (saliency_mask) must agree except
  within round-off of the decision boundary.
* :func:`dispatch_call`, :func:`library_ops`, :func:`forward_arguments`,
  :func:`backward_arguments`, :func:`non_contiguous`: the pieces of the conformance suite
  (python_tests/test_conformance.py) that follow from the contract.
"""

from __future__ import annotations

import inspect
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _dispatch, functional, reference
from ._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from ._register import library_op
from ._spec import OPS, SPECS

Arguments = dict[str, Any]

#: Ops whose outputs have a gradient (saliency_mask has none).
DIFFERENTIABLE = tuple(op for op in OPS if SPECS[op].differentiable)
#: Absolute floors of the low-precision rule, per compute dtype of the inputs.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
#: The largest default batch of a sample under the Triton interpreter.
INTERPRETER_BATCH = 4
#: The largest cgc_loss frame (size) of a sample under the Triton interpreter.
INTERPRETER_FRAME = 12
#: |e − boundary| under which a backend's keep decision may follow its own rounding.
MASK_NEAR = 1e-5


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


# --- seeded inputs: the named sample variants of every op ---


class Draw:
    """Seeded random tensors: drawn in fp64 on the CPU (the same values on every device and in
    every dtype, up to rounding), then moved and cast."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype, seed: int) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale
        return x.to(self.device, self.dtype)

    def positive(self, *shape: int) -> torch.Tensor:
        """|N(0, 1)|: non-negative maps, like ReLU'd CAMs."""
        return (
            torch.randn(*shape, generator=self.gen, dtype=torch.float64)
            .abs()
            .to(self.device, self.dtype)
        )

    def uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, dtype=torch.float64).to(
            self.device, self.dtype
        )

    def integers(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(max(high, 1), shape, generator=self.gen).to(self.device)

    def crops(self, batch: int, size: int) -> torch.Tensor:
        """(i, j, h, w) crop boxes of every shape from 1×1 to the whole size×size frame."""
        height = torch.randint(1, size + 1, (batch,), generator=self.gen)
        width = torch.randint(1, size + 1, (batch,), generator=self.gen)
        top = torch.rand(batch, generator=self.gen, dtype=torch.float64) * (size - height + 1)
        left = torch.rand(batch, generator=self.gen, dtype=torch.float64) * (size - width + 1)
        boxes = torch.stack([top.long(), left.long(), height, width], dim=1)
        return boxes.to(self.device)

    def flips(self, batch: int) -> torch.Tensor:
        return (torch.rand(batch, generator=self.gen) < 0.5).to(self.device)


Build = Callable[[Draw, int, bool], Arguments]


@dataclass(frozen=True)
class Variant:
    """A named sample of an op: ``build(draw, batch, small)`` gives the tensors and the options
    that differ from the spec's defaults. ``batch`` is the default batch. Where the kernels run
    under the Triton interpreter (slow, with small tiles), ``small`` asks for smaller shapes that
    still span more than one of its tiles, and ``small_batch`` (by default the batch, at most
    INTERPRETER_BATCH) replaces the batch. ``large`` marks shapes beyond one tile of the
    compiled kernels (checked with cheaper gradient checks)."""

    name: str
    build: Build
    batch: int
    small_batch: int | None = None
    large: bool = False

    def default_batch(self, small: bool) -> int:
        if not small:
            return self.batch
        if self.small_batch is not None:
            return self.small_batch
        return min(self.batch, INTERPRETER_BATCH)


def _angular_distance_variants() -> list[Variant]:
    def pair(d: int, m: int | None) -> Build:
        return lambda r, n, small: {"x": r.normal(n, d), "y": None if m is None else r.normal(m, d)}

    def multi_tile(with_y: bool) -> Build:
        # 131 × 517 rows: more than one 128 × 512 tile of the C++ kernel in each direction
        # (37 × 40: more than one 16-row tile of the interpreter's)
        def build(r: Draw, n: int, small: bool) -> Arguments:
            d, m = (16, 40) if small else (9, 517)
            return {"x": r.normal(n, d), "y": r.normal(m, d) if with_y else None}

        return build

    return [
        Variant("default", pair(16, 15), 12),
        Variant("x-y", pair(3, 7), 5),
        Variant("y=None", pair(3, None), 5),
        Variant("1x1x1-x-y", pair(1, 1), 1),
        Variant("1x1x1-y=None", pair(1, None), 1),
        Variant("D=0-x-y", pair(0, 2), 3),
        Variant("D=0-y=None", pair(0, None), 3),
        Variant("M=0", pair(3, 0), 4),  # y without rows: an [N, 0] result
        Variant("multi-tile-x-y", multi_tile(True), 131, 37, large=True),
        Variant("multi-tile-y=None", multi_tile(False), 300, 37, large=True),
    ]


def _amc_loss_variants() -> list[Variant]:
    # In 5-D the angles of random rows spread over ~[0.6, 2.5]: margin 1.6 makes the hinge of
    # the negative pairs active for some pairs and inactive for others.
    def build(pairs: str, reduction: str) -> Build:
        return lambda r, n, small: {
            "features": r.normal(n, 5),
            "labels": r.integers(3, n),
            "margin": 1.6,
            "pairs": pairs,
            "reduction": reduction,
        }

    grid = [(p, red) for p in ("all", "halves") for red in ("mean", "sum", "none")]
    # 300 rows: several all-pairs tiles of the C++ kernel (37: of the interpreter's 16 rows)
    many = (("all", "none"), ("halves", "none"), ("all", "mean"), ("halves", "sum"))
    return [
        Variant("default", build("all", "mean"), 12),
        *(Variant(f"n{n}-{p}-{red}", build(p, red), n) for n in (1, 2, 7) for p, red in grid),
        *(Variant(f"multi-tile-{p}-{red}", build(p, red), 300, 37, True) for p, red in many),
    ]


def _supcon_loss_variants() -> list[Variant]:
    def build(
        shape: tuple[int, int, int],
        mode: str = "all",
        labeled: bool = True,
        reduction: str = "mean",
        normalize: bool = True,
        flat: bool = False,
        small_shape: tuple[int, int, int] | None = None,
    ) -> Build:
        """shape = (V, D, M): views, features, negatives (0: None); flat: [N, D] features."""

        def make(r: Draw, n: int, small: bool) -> Arguments:
            views, d, m = small_shape if small and small_shape else shape
            scale = 1.0 if normalize else 0.25  # unnormalised rows of norm ~1: sane logits
            return {
                "features": r.normal(*((n, d) if flat else (n, views, d)), scale=scale),
                "labels": r.integers(4, n) if labeled else None,
                "negatives": r.normal(m, d, scale=scale) if m else None,
                "temperature": 0.2,
                "contrast_mode": mode,
                "normalize": normalize,
                "reduction": reduction,
            }

        return make

    cases = [(mode, labeled) for mode in ("all", "one") for labeled in (True, False)]

    def tag(mode: str, labeled: bool) -> str:
        return f"{mode}-{'labels' if labeled else 'simclr'}"

    out = [Variant("default", build((2, 16, 5)), 12)]
    # one row: no positive (V = 1), with negatives, with two views
    out += [Variant(f"single-{tag(*c)}", build((1, 3, 0), *c, "none"), 1) for c in cases]
    out += [
        Variant("single-negatives", build((1, 3, 2), "all", True, "none"), 1),
        Variant("single-two-views", build((2, 3, 0), "one", False, "mean"), 1),
    ]
    for name, (shape, n) in {"one-view": ((1, 4, 2), 9), "odd": ((3, 5, 3), 7)}.items():
        out += [
            Variant(f"{name}-{tag(*c)}-{red}", build(shape, *c, red), n)
            for c in cases
            for red in ("mean", "sum", "none")
        ]
    out += [
        Variant(f"2d-{tag('all', lab)}", build((1, 4, 0), "all", lab, flat=True), 9)
        for lab in (True, False)
    ]
    reductions = ("mean", "sum", "none", "mean")
    out += [
        Variant(f"raw-{tag(*c)}-{red}", build((2, 5, 3), *c, red, normalize=False), 7)
        for c, red in zip(cases, reductions, strict=True)
    ]
    # 80 × 3 rows of 48 features: several task tiles of the C++ kernel, the last one partial
    # (9 × 2 rows: more than one 16-row tile of the interpreter's)
    out += [
        Variant(
            f"multi-tile-{tag(*c)}",
            build((3, 48, 37), *c, "none", small_shape=(2, 16, 5)),
            80,
            9,
            large=True,
        )
        for c in cases
    ]
    return out


GRADCAM_OPTIONS = {
    # (weighting, relu, normalize, output_size): every weighting, normalisation and resize kind
    "mean-plain": ("mean", True, None, None),
    "mean-max-up": ("mean", False, "max", (9, 7)),
    "elem-minmax-down": ("elementwise", True, "minmax", (4, 3)),
    "elem-sum-skewed": ("elementwise", False, "sum", (15, 2)),
    "mean-sum-same": ("mean", True, "sum", "same"),
}
GRADCAM_SHAPES = {
    # [K, H, W], the batch, and [K, H, W] under the interpreter: one channel, odd sizes, fewer
    # maps than threads (the C++ kernel splits K into chunks), more channels than one chunk on
    # several maps (under the interpreter: more channels and pixels than one 16 × 4 tile).
    "1x1x3x4": ((1, 3, 4), 1, None),
    "odd": ((7, 5, 6), 3, None),
    "one-map": ((48, 6, 5), 1, (9, 5, 7)),
    "wide": ((33, 9, 8), 4, (9, 5, 7)),
}


def _gradcam_variants() -> list[Variant]:
    def build(options: tuple, chw: tuple[int, int, int], small_chw: tuple | None = None) -> Build:
        weighting, relu, normalize, size = options

        def make(r: Draw, n: int, small: bool) -> Arguments:
            k, h, w = small_chw if small and small_chw else chw
            return {
                "activations": r.normal(n, k, h, w),
                "gradients": r.normal(n, k, h, w),
                "weighting": weighting,
                "relu": relu,
                "normalize": normalize,
                "output_size": (h, w) if size == "same" else size,
            }

        return make

    out = [Variant("default", build(("mean", True, None, (9, 7)), (8, 5, 6)), 12)]
    for shape, (chw, n, small_chw) in GRADCAM_SHAPES.items():
        for name, options in GRADCAM_OPTIONS.items():
            make = build(options, chw, small_chw)
            out.append(Variant(f"{shape}-{name}", make, n, large=small_chw is not None))
    out += [
        # a 1×1 map resized: constant, its maximum tied everywhere
        Variant("odd-mean-minmax-norelu", build(("mean", False, "minmax", None), (7, 5, 6)), 3),
        Variant("one-pixel-mean-max-up", build(("mean", True, "max", (3, 2)), (1, 1, 1)), 1),
        Variant("K=0-elem-plain", build(("elementwise", True, None, None), (0, 4, 5)), 2),
    ]
    return out


def _class_activation_map_variants() -> list[Variant]:
    def build(k: int, h: int, w: int, classes: int, small: tuple | None = None) -> Build:
        def make(r: Draw, n: int, interpreted: bool) -> Arguments:
            kk, hh, ww, cc = small if interpreted and small else (k, h, w, classes)
            return {
                "activations": r.normal(n, kk, hh, ww),
                "fc_weight": r.normal(cc, kk),
                "targets": r.integers(cc, n),
            }

        return make

    return [
        Variant("default", build(8, 5, 6, 4), 12),  # 12 maps on 4 classes: dW rows accumulate
        Variant("1x1x1x1", build(1, 1, 1, 1), 1),
        Variant("odd", build(7, 5, 6, 4), 3),
        # fewer maps than threads: the C++ kernel splits K into chunks
        Variant("one-map", build(48, 6, 5, 3, (9, 5, 7, 3)), 1, large=True),
        # more channels than one chunk on several maps (more than one 4 × 16 interpreter tile,
        # fewer classes than maps)
        Variant("wide", build(67, 7, 7, 10, (9, 5, 7, 3)), 6, 5, large=True),
        Variant("K=0", build(0, 4, 5, 2), 2),
    ]


def cgc_edge_crops(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity crop (twice), 1×1 crops in two corners, full-length strips on two borders
    and non-square interior crops; every other one flipped. (crops [8, 4], flips [8])"""
    boxes = [
        (0, 0, size, size),
        (0, 0, size, size),
        (0, 0, 1, 1),
        (size - 1, size - 1, 1, 1),
        (0, size - 1, size, 1),
        (size - 1, 0, 1, size),
        (1, 2, size - 3, size - 5),
        (size // 3, size // 5, size // 2, size // 4 + 1),
    ]
    return torch.tensor(boxes), torch.arange(len(boxes)) % 2 == 1


def _cgc_loss_variants() -> list[Variant]:
    def build(h: int, w: int, size: int, kind: str = "random", small: tuple | None = None) -> Build:
        def make(r: Draw, n: int, interpreted: bool) -> Arguments:
            hh, ww = small if interpreted and small else (h, w)
            frame = min(size, INTERPRETER_FRAME) if interpreted else size
            arguments = {
                "cam_orig": r.positive(n, hh, ww),
                "cam_aug": r.positive(n, hh, ww),
                "crops": r.crops(n, frame),
                "flips": r.flips(n),
                "temperature": 0.3,
                "size": frame,
            }
            if kind == "all-flipped":
                arguments["flips"] = torch.ones(n, dtype=torch.bool, device=r.device)
            elif kind == "int32-crops":
                arguments["crops"] = arguments["crops"].to(torch.int32)
            elif kind == "edge":
                crops, flips = cgc_edge_crops(frame)
                cycle = torch.arange(n) % len(crops)
                arguments.update(crops=crops[cycle].to(r.device), flips=flips[cycle].to(r.device))
            return arguments

        return make

    return [
        Variant("default", build(7, 7, 32), 12),
        Variant("b1-7x7-s16", build(7, 7, 16), 1),
        Variant("b3-1x1-s16", build(1, 1, 16), 3),
        Variant("b5-3x5-s37", build(3, 5, 37), 5),
        Variant("b9-7x7-s32", build(7, 7, 32), 9),
        # 33 maps: two per-sample tasks of the C++ B×B epilogue (19: more than one 16-row block
        # of the interpreted B×B kernels)
        Variant("b33-4x6-s24", build(4, 6, 24, small=(3, 4)), 33, 19, large=True),
        Variant("edge-crops-3x5-s16", build(3, 5, 16, "edge"), 8, 8),
        Variant("all-flipped-4x5-s20", build(4, 5, 20, "all-flipped"), 6),
        Variant("int32-crops-4x5-s19", build(4, 5, 19, "int32-crops"), 6),
        Variant("frame-1-3x2-s1", build(3, 2, 1), 2),  # a 1×1 frame
    ]


SALIENCY_SHAPES = {
    # (C, H, W, h, w), the batch, and the shape under the interpreter: one pixel, odd
    # up-sampling, down-sampling, no resize
    "1x1": ((1, 1, 1, 1, 1), 1, None),
    "up-odd": ((3, 13, 11, 5, 4), 3, (2, 7, 5, 3, 2)),
    "down": ((2, 6, 5, 9, 7), 2, (2, 4, 3, 5, 4)),
    "same": ((1, 7, 8, 7, 8), 2, (1, 4, 5, 4, 5)),
}
SALIENCY_RULES = {
    "th-0.5": {"threshold": 0.5},
    "th-0.2": {"threshold": 0.2},
    "top-0.15": {"top_fraction": 0.15},
    "top-1": {"top_fraction": 1.0},
    "th-negative": {"threshold": -0.5},
}


def _saliency_mask_variants() -> list[Variant]:
    def build(shape: tuple, rule: dict, small: tuple | None, fill: float = -2.0) -> Build:
        def make(r: Draw, n: int, interpreted: bool) -> Arguments:
            c, height, width, h, w = small if interpreted and small else shape
            tensors = {"images": r.normal(n, c, height, width), "saliency": r.uniform(n, h, w)}
            return tensors | {"fill": fill} | rule

        return make

    out = [Variant("default", build((3, 12, 10, 5, 4), {}, (3, 6, 5, 3, 2), fill=0.0), 12)]
    for shape, (chw, n, small) in SALIENCY_SHAPES.items():
        rules = list(SALIENCY_RULES)[: 5 if shape == "up-odd" else 3]
        out += [
            Variant(f"{shape}-{rule}", build(chw, SALIENCY_RULES[rule], small), n) for rule in rules
        ]
    # more pixels than one tile (under the interpreter: than its 16)
    big, small = (3, 48, 40, 7, 7), (2, 7, 5, 3, 4)
    out += [
        Variant("large-th-0.4", build(big, {"threshold": 0.4}, small), 3, 2, large=True),
        Variant("large-top-0.3", build(big, {"top_fraction": 0.3}, small), 3, 2, large=True),
    ]
    return out


VARIANTS: dict[str, tuple[Variant, ...]] = {
    "angular_distance": tuple(_angular_distance_variants()),
    "amc_loss": tuple(_amc_loss_variants()),
    "supcon_loss": tuple(_supcon_loss_variants()),
    "gradcam": tuple(_gradcam_variants()),
    "class_activation_map": tuple(_class_activation_map_variants()),
    "cgc_loss": tuple(_cgc_loss_variants()),
    "saliency_mask": tuple(_saliency_mask_variants()),
}


def variants(op: str) -> tuple[Variant, ...]:
    """The op's named sample variants; the first, "default", is what ``check`` runs."""
    if op not in VARIANTS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    return VARIANTS[op]


def variant(op: str, name: str) -> Variant:
    for candidate in variants(op):
        if candidate.name == name:
            return candidate
    raise ValueError(f"{op} has no sample variant {name!r}: {[v.name for v in variants(op)]}")


def make_inputs(
    op: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    variant_name: str = "default",
    batch: int | None = None,
    seed: int = 0,
    small: bool = False,
) -> Arguments:
    """Seeded random arguments of `op` by name: every tensor and every option of its spec.

    `variant_name` picks a sample (see :func:`variants`); `batch` replaces its batch size (0
    gives an empty batch); `small` picks the shapes for the Triton interpreter.
    """
    spec, chosen = SPECS[op], variant(op, variant_name)
    if batch is None:
        batch = chosen.default_batch(small)
    draw = Draw(device, dtype, seed + zlib.crc32(f"{op}/{variant_name}".encode()))
    built = chosen.build(draw, batch, small)
    unknown = set(built) - set(spec.tensors) - {o.name for o in spec.options}
    if unknown:
        raise AssertionError(f"{op}/{variant_name} builds unknown arguments {sorted(unknown)}")
    return {name: built.get(name) for name in spec.tensors} | {
        o.name: built.get(o.name, o.default) for o in spec.options
    }


def interpreted(backend: str, device: torch.device | str) -> bool:
    """Whether `backend` runs its kernels under the Triton interpreter on `device`."""
    return backend == "triton" and torch.device(device).type == "cpu"


# --- running an op ---


def as_arguments(op: str, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> Arguments:
    """(args, kwargs) of a call to ``functional.<op>`` as the arguments by name."""
    bound = inspect.signature(getattr(functional, op)).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("backend", None)
    return arguments


def call(op: str, backend: str | None, arguments: Arguments) -> Any:
    return getattr(functional, op)(**arguments, backend=backend)


def dispatch_call(op: str, arguments: Arguments) -> _dispatch.Call:
    """The metadata that dispatch sees for these arguments (as functional.run builds it)."""
    spec = SPECS[op]
    checked = spec.validate(dict(arguments))
    tensors = [checked[name] for name in spec.tensors if checked[name] is not None]
    options = {o.name: checked[o.name] for o in spec.options}
    shapes = tuple(tuple(t.shape) for t in tensors)
    return _dispatch.Call(op, tensors[0].device, tensors[0].dtype, shapes, options)


def differentiable_inputs(op: str, arguments: Arguments) -> list[str]:
    """The differentiable tensor arguments present in this call."""
    return [name for name in SPECS[op].differentiable if arguments.get(name) is not None]


def run_with_grads(
    op: str,
    backend: str | None,
    arguments: Arguments,
    *,
    wrt: Sequence[str] | None = None,
    projection: str = "weighted",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(outputs, gradients): the op's outputs and the gradients, with respect to `wrt` (every
    differentiable input by default), of a fixed projection of its differentiable result:
    ``"weighted"`` (a ramp of weights) or ``"sum"`` (an expanded, stride-0 upstream gradient)."""
    spec = SPECS[op]
    wrt = differentiable_inputs(op, arguments) if wrt is None else list(wrt)
    leaves = dict(arguments)
    for name in wrt:
        leaves[name] = arguments[name].detach().clone().requires_grad_()
    result = call(op, backend, leaves)
    outputs = list(result) if spec.results > 1 else [result]
    if not wrt:
        return [o.detach() for o in outputs], []
    out = outputs[0]
    if projection == "sum":
        target = out.sum()
    else:
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device)
        target = (out.flatten() * weights).sum()
    # an input that an empty batch leaves out of the graph gets a zero gradient
    grads = torch.autograd.grad(
        target, [leaves[name] for name in wrt], allow_unused=True, materialize_grads=True
    )
    return [o.detach() for o in outputs], list(grads)


def _upcast(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def within_reference_error(
    got: torch.Tensor, same_dtype_ref: torch.Tensor, fp64_ref: torch.Tensor, floor: float
) -> tuple[bool, float, float]:
    """(ok, kernel error, bound): max|got − ref64| ≤ 2·max|ref − ref64| + floor·(1 + max|ref64|)."""
    fp64_ref = fp64_ref.double()
    error = (got.double() - fp64_ref).abs().max().item() if got.numel() else 0.0
    ref_error = (same_dtype_ref.double() - fp64_ref).abs().max().item() if got.numel() else 0.0
    scale = fp64_ref.abs().max().item() if got.numel() else 0.0
    bound = 2 * ref_error + floor * (1 + scale)
    return error <= bound, error, bound


def _floating_dtype(op: str, arguments: Arguments) -> torch.dtype:
    return next(
        arguments[name].dtype
        for name in SPECS[op].tensors
        if isinstance(arguments.get(name), torch.Tensor) and arguments[name].is_floating_point()
    )


def compare_backend(
    op: str, backend: str, arguments: Arguments | Sequence[Any], kwargs: dict | None = None
) -> tuple[bool, float, float]:
    """`backend` against the reference in the same dtype and in fp64: (ok, worst error, bound).

    `arguments` are the op's arguments by name, or positional arguments of ``functional.<op>``
    with `kwargs`. The value and the gradient of every differentiable input must have the
    reference's shape and dtype, and lie within the low-precision rule of docs/design.md#7-tests.
    """
    if not isinstance(arguments, dict):
        arguments = as_arguments(op, arguments, kwargs)
    elif kwargs:
        arguments = arguments | kwargs
    if op == "saliency_mask":
        return compare_masks(backend, arguments)
    dtype = _floating_dtype(op, arguments)
    got_out, got_grads = run_with_grads(op, backend, arguments)
    same_out, same_grads = run_with_grads(op, "reference", arguments)
    exact_out, exact_grads = run_with_grads(
        op, "reference", {k: _upcast(v) for k, v in arguments.items()}
    )
    results = []
    for g, s, e in zip(
        [got_out[0], *got_grads],
        [same_out[0], *same_grads],
        [exact_out[0], *exact_grads],
        strict=True,
    ):
        if g.shape != e.shape or g.dtype != s.dtype:
            results.append((False, math.inf, 0.0))
        else:
            results.append(within_reference_error(g, s, e, FLOOR[dtype]))
    worst = max(results, key=lambda r: r[1] / r[2] if r[2] else (math.inf if r[1] else 0.0))
    return all(ok for ok, _, _ in results), worst[1], worst[2]


def compare_masks(backend: str, arguments: Arguments) -> tuple[bool, float, float]:
    """saliency_mask against the reference: (ok, decisions that differ, 0).

    The keep masks must agree except for pixels whose fp64 normalised saliency e lies within
    MASK_NEAR of the decision boundary (the threshold, or the k-th largest e); top_fraction
    keeps exactly k pixels per image; the masked images follow the backend's own mask exactly.
    """
    from .reference.gradcam import normalize_maps, resize_maps
    from .reference.saliency_mask import kept_pixel_count

    images, saliency = arguments["images"], arguments["saliency"]
    masked, keep = call("saliency_mask", backend, arguments)
    ref_masked, ref_keep = call("saliency_mask", "reference", arguments)
    if (
        keep.dtype != torch.bool
        or masked.dtype != images.dtype
        or keep.shape != ref_keep.shape
        or masked.shape != ref_masked.shape
    ):
        return False, math.inf, 0.0
    fill = torch.full_like(images, arguments["fill"])
    follows = bool(torch.equal(masked, torch.where(keep[:, None], images, fill)))
    if not keep.numel():
        return follows, 0.0, 0.0
    size = tuple(images.shape[2:])
    e = normalize_maps(resize_maps(saliency.double(), size), "minmax").flatten(1)
    keep, ref_keep = keep.flatten(1).cpu(), ref_keep.flatten(1).cpu()
    e = e.cpu()
    if arguments["top_fraction"] is None:
        boundary = torch.full_like(e[:, :1], float(arguments["threshold"]))
        counts_ok = True
    else:
        k = kept_pixel_count(arguments["top_fraction"], e.shape[1])
        counts_ok = bool((keep.sum(1) == k).all())
        boundary = e.sort(dim=1, descending=True).values[:, max(k - 1, 0)][:, None]
    differs = (keep != ref_keep) & ((e - boundary).abs() >= MASK_NEAR)
    count = int(differs.sum())
    return follows and counts_ok and count == 0, float(count), 0.0


# --- the compiled ops of a backend (torch.ops.amc_kernels.*) ---

#: Backend-independent trailing arguments of backward ops, by schema name (amc_kernels._register).
BACKWARD_EXTRAS = {"clamp_grad_at_bounds": CLAMP_GRAD_AT_BOUNDS}


def library_ops(op: str, backend: str) -> tuple[str, str | None] | None:
    """(forward, backward or None) names in torch.ops.amc_kernels of a compiled backend: cpp and
    cuda share <op>_fwd/_bwd, every other backend registers <op>_<backend>_fwd/_bwd."""
    if backend == "reference":
        return None
    prefix = op if backend in ("cpp", "cuda") else f"{op}_{backend}"
    return f"{prefix}_fwd", (f"{prefix}_bwd" if SPECS[op].differentiable else None)


def schema(name: str) -> str:
    return str(library_op(name).default._schema)


def forward_arguments(op: str, arguments: Arguments) -> list[Any]:
    """The positional arguments of the forward op: the checked tensors, then the options as
    the kernels encode them."""
    spec = SPECS[op]
    return spec.kernel_arguments(spec.validate(dict(arguments)))


def backward_arguments(
    op: str,
    bwd: str,
    forward: Sequence[Any],
    outputs: Sequence[torch.Tensor],
    grad: torch.Tensor,
    output_mask: Sequence[bool],
) -> list[Any]:
    """(grad, *tensors, *saved, *options, *extras, output_mask) for the backward op `bwd`, from
    the forward op's arguments and outputs; the extras are read off the schema by name."""
    spec = SPECS[op]
    count = len(spec.tensors)
    tensors = [t.detach() if isinstance(t, torch.Tensor) else t for t in forward[:count]]
    saved = list(outputs[spec.results :])
    names = [a.name for a in library_op(bwd).default._schema.arguments]
    first_extra = 1 + count + len(saved) + len(spec.options)
    extras = [BACKWARD_EXTRAS[name] for name in names[first_extra:-1]]
    return [grad, *tensors, *saved, *forward[count:], *extras, list(output_mask)]


# --- layouts ---

_GAP_FILL = {torch.bool: True}


def strided_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of a copy of `t`, with the same values and other strides.

    - ``"strided"``: every other element, from the second on (a storage offset too), of a
      buffer twice as wide in the last dimension. The gaps hold NaN (floating), 0 (integers: an
      index that is always in range, so that a kernel ignoring the strides computes wrong
      values rather than reading out of bounds) or True (bools).
    - ``"transposed"``: column-major in the last two dimensions.
    - ``"channels-last"``: dimension 1 innermost (torch.channels_last for 4-D tensors).

    A layout that does not apply to `t` (transposed 1-D, channels-last below 3-D) is strided.
    """
    if t.dim() == 0:
        return t.clone()
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels-last" and t.dim() >= 3:
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide.fill_(math.nan if t.is_floating_point() else _GAP_FILL.get(t.dtype, 0))
    view = wide[..., 1::2]
    view.copy_(t)
    return view


def non_contiguous(arguments: Arguments, layout: str) -> Arguments:
    """Every tensor argument replaced by a :func:`strided_view` with the same values."""
    return {
        k: strided_view(v, layout) if isinstance(v, torch.Tensor) else v
        for k, v in arguments.items()
    }


__all__ = [
    "DIFFERENTIABLE",
    "FLOOR",
    "GRADCAM_OPTIONS",
    "INTERPRETER_BATCH",
    "INTERPRETER_FRAME",
    "MASK_NEAR",
    "VARIANTS",
    "ClosedForm",
    "Draw",
    "Variant",
    "as_arguments",
    "backward_arguments",
    "call",
    "cgc_edge_crops",
    "closed_form_cases",
    "compare_backend",
    "compare_masks",
    "differentiable_inputs",
    "dispatch_call",
    "forward_arguments",
    "interpreted",
    "library_op",
    "library_ops",
    "make_inputs",
    "non_contiguous",
    "reference",
    "run_with_grads",
    "schema",
    "strided_view",
    "variant",
    "variants",
    "within_reference_error",
]
