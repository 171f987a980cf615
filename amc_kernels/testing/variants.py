"""Seeded inputs: the named sample variants of every op, built from its spec."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._spec import OPS, SPECS, Arguments

#: The largest default batch of a sample under the Triton interpreter.
INTERPRETER_BATCH = 4
#: The largest cgc_loss frame (size) of a sample under the Triton interpreter.
INTERPRETER_FRAME = 12


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
            elif kind == "tensor-temperature":  # learnable: a 0-d tensor in the maps' dtype
                arguments["temperature"] = torch.tensor(
                    0.3, dtype=arguments["cam_orig"].dtype, device=r.device
                )
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
        Variant("tensor-temperature-4x5-s20", build(4, 5, 20, "tensor-temperature"), 6),
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
    "th-0": {"threshold": 0.0},  # every pixel but the least salient
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
