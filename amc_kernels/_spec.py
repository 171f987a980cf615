"""One spec per op: the contract that every layer reads (docs/design.md#3-backends-and-dispatch).

An :class:`OpSpec` names the op's tensor arguments in kernel order, its keyword options with
their defaults and checks, the tensor validation, the differentiable inputs, the number of
results and the statistics the forward saves for the backward. ``functional`` and ``nn`` take
their defaults from here, the dispatcher and the compiled backends their argument order, the
tests and benchmarks their inputs. Each default and each constant of the math is written once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from . import _checks as check

# --- the constants of the ops' math (C++: csrc/include/amc_kernels/math.h) ---

#: x̂ = x / max(‖x‖, NORM_EPS), as F.normalize and tf.l2_normalize.
NORM_EPS = 1e-12
#: The official AMC clip: cosines are clamped to [−1 + δ, 1 − δ] in the compute dtype.
ARCCOS_DELTA = 1e-7
#: The ε of the map normalisations ("max", "minmax", "sum", CGC's s(c), ExCon's min-max).
MAP_EPS = 1e-8

REDUCTIONS = ("mean", "sum", "none")
GRADCAM_NORMALIZATIONS = (None, "max", "minmax", "sum")
#: supcon_loss's anchors without a positive: "count" (loss 0, counted in the mean: SupContrast)
#: or "drop" (left out of the mean: pytorch-metric-learning).
NO_POSITIVE = ("count", "drop")

Arguments = dict[str, Any]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    """count_n = #{m : labels[m] = labels[n]}, [N], by a sort and two binary searches (no host
    synchronisation)."""
    values = labels.long()
    ordered = values.sort().values
    return torch.searchsorted(ordered, values, right=True) - torch.searchsorted(ordered, values)


@dataclass(frozen=True)
class Option:
    """A keyword option: its default, its check (op, name, value) -> value, and how the
    compiled kernels' schema encodes it (``kernel``; the identity when None)."""

    name: str
    default: Any
    check: Callable[[str, str, Any], Any]
    kernel: Callable[[Any], Any] | None = None
    #: A number or a 0-d tensor that may receive a gradient: the schemas take it as two
    #: arguments, ``Tensor? <name>_tensor, float <name>``: (None, the number) for a number,
    #: (the tensor, 0.0: ignored) for a tensor.
    learnable: bool = False

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return (f"{self.name}_tensor", self.name) if self.learnable else (self.name,)

    def encode(self, value: Any) -> tuple[Any, ...]:
        """The schema arguments of `value`."""
        if self.learnable:
            return (value, 0.0) if isinstance(value, torch.Tensor) else (None, float(value))
        return (self.kernel(value) if self.kernel else value,)


@dataclass(frozen=True)
class OpSpec:
    """The contract of one op, read by every layer (see the module docstring)."""

    name: str
    tensors: tuple[str, ...]  # tensor arguments, in the order of the kernels' schemas
    options: tuple[Option, ...]  # keyword options, in schema order after the tensors
    validate_tensors: Callable[[Arguments], None]  # checks (and canonicalises) in place
    #: Arguments that receive gradients: tensors, or learnable options (when given a tensor).
    differentiable: tuple[str, ...] = ()
    results: int = 1  # leading outputs of the forward op that the user gets
    saved: tuple[str, ...] = ()  # further forward outputs, saved for the backward
    #: Options that the public function implements around the op, for every backend
    #: (amc_kernels/_composite.py); the backends never see them.
    frontend: tuple[Option, ...] = ()

    @property
    def all_options(self) -> tuple[Option, ...]:
        return self.options + self.frontend

    @property
    def defaults(self) -> SimpleNamespace:
        return SimpleNamespace(**{o.name: o.default for o in self.all_options})

    @property
    def kernel_options(self) -> tuple[str, ...]:
        """The names of the compiled schemas' arguments after the tensors (Option.learnable)."""
        return tuple(name for o in self.options for name in o.kernel_names)

    def kernel_name(self, name: str) -> str:
        """The schema argument that carries the tensor or learnable option `name`."""
        return name if name in self.tensors else f"{name}_tensor"

    @property
    def differentiable_positions(self) -> tuple[int, ...]:
        """Positions of the differentiable arguments among the forward op's arguments."""
        names = (*self.tensors, *self.kernel_options)
        return tuple(names.index(self.kernel_name(name)) for name in self.differentiable)

    def check_options(self, options: Arguments) -> Arguments:
        """Every option checked and canonicalised (missing ones take their defaults)."""
        unknown = set(options) - {o.name for o in self.all_options}
        if unknown:
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)}")
        return {
            o.name: o.check(self.name, o.name, options.get(o.name, o.default))
            for o in self.all_options
        }

    def validate(self, arguments: Arguments) -> Arguments:
        """The checked arguments: options first (cheap), then the tensors."""
        options = self.check_options({k: v for k, v in arguments.items() if k not in self.tensors})
        checked = {name: arguments.get(name) for name in self.tensors} | options
        self.validate_tensors(checked)  # in place: canonical tensors replace the user's
        return checked

    def kernel_arguments(self, arguments: Arguments) -> list[Any]:
        """Positional arguments of the compiled forward op: the tensors, then the options."""
        options = [value for o in self.options for value in o.encode(arguments[o.name])]
        return [arguments[name] for name in self.tensors] + options


# --- option checks: (op, name, value) -> canonical value ---


def one_of(*choices: object) -> Callable[[str, str, Any], Any]:
    def checked(op: str, name: str, value: object) -> object:
        check.choice(op, name, value, choices)
        return value

    return checked


def temperature(op: str, name: str, value: object) -> float | torch.Tensor:
    """A number > 0, or a 0-d floating tensor (a learnable temperature; its gradient is exact)."""
    if not isinstance(value, torch.Tensor):
        return check.positive(op, name, value)
    check.floating(op, name, value)
    if value.dim() != 0:
        raise ValueError(
            f"{op}: {name} must be a number or a 0-d tensor, got shape {tuple(value.shape)}; "
            f"use {name}.reshape(())"
        )
    return value  # its value is checked with the tensors (after their device)


def optional_index(op: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int or None, got {type(value).__name__}")
    return int(value)


def optional_fraction(op: str, name: str, value: object) -> float | None:
    return None if value is None else check.in_range(op, name, value, 0.0, 1.0)


def unit_interval(op: str, name: str, value: object) -> float:
    return check.between(op, name, value, 0.0, 1.0)


def optional_size(op: str, name: str, value: object) -> tuple[int, int] | None:
    return None if value is None else check.size_pair(op, name, value)


# --- tensor validation, per op ---


def _features(op: str, name: str, x: object, dims: tuple[int, ...], layout: str) -> torch.Tensor:
    x = check.floating(op, name, x)
    check.ndim(op, name, x, dims, layout)
    return x


def _labels(op: str, labels: object, features: torch.Tensor) -> torch.Tensor:
    labels = check.integer(op, "labels", labels)
    check.ndim(op, "labels", labels, (1,), "[N]")
    check.size(op, "labels", labels, 0, features.shape[0], "one label per sample of features")
    check.same_device(op, "labels", labels, "features", features)
    return labels


def _like(op: str, name: str, x: object, other_name: str, other: torch.Tensor) -> torch.Tensor:
    """A floating tensor of the same shape, dtype and device as `other`."""
    x = check.floating(op, name, x)
    if x.dim() != other.dim():  # the message is built only here: no graph break when compiling
        check.ndim(op, name, x, (other.dim(),), f"{list(other.shape)} (as {other_name})")
    check.same_device(op, name, x, other_name, other)
    check.same_dtype(op, name, x, other_name, other)
    if x.shape != other.shape:
        raise ValueError(
            f"{op}: {name} must have the shape of {other_name}, {tuple(other.shape)}; "
            f"got {tuple(x.shape)}"
        )
    return x


def _pixels(op: str, name: str, x: torch.Tensor) -> None:
    """Maps are resampled and normalised over their pixels: height and width must be ≥ 1."""
    if 0 in x.shape[-2:]:
        raise ValueError(
            f"{op}: {name} must have a height and a width of at least 1 pixel, "
            f"got shape {tuple(x.shape)}"
        )


def _tensor_temperature(op: str, tau: object, other_name: str, other: torch.Tensor) -> None:
    if isinstance(tau, torch.Tensor):
        check.same_device(op, "temperature", tau, other_name, other)
        check.positive_values(op, "temperature", tau)


def _angular_distance(a: Arguments) -> None:
    op = "angular_distance"
    x = a["x"] = _features(op, "x", a["x"], (2,), "[N, D]")
    if a["y"] is not None:
        y = a["y"] = _features(op, "y", a["y"], (2,), "[M, D]")
        check.same_device(op, "y", y, "x", x)
        check.same_dtype(op, "y", y, "x", x)
        check.size(op, "y", y, 1, x.shape[1], "the feature size D of x")
    for name in ("x", "y"):
        if a[name] is not None:
            check.finite_values(op, name, a[name])


def _amc_loss(a: Arguments) -> None:
    op = "amc_loss"
    features = a["features"] = _features(op, "features", a["features"], (2,), "[N, D]")
    a["labels"] = _labels(op, a["labels"], features)
    check.finite_values(op, "features", features)


def _supcon_loss(a: Arguments) -> None:
    """Also canonicalises features [N, D] to one view, [N, 1, D]."""
    op = "supcon_loss"
    features = _features(op, "features", a["features"], (2, 3), "[N, V, D] or [N, D]")
    if features.dim() == 3 and features.shape[1] == 0:
        raise ValueError(f"{op}: features must have at least one view, got shape [N, 0, D]")
    if a["labels"] is not None:
        a["labels"] = _labels(op, a["labels"], features)
    if a["negatives"] is not None:
        negatives = a["negatives"] = _features(op, "negatives", a["negatives"], (2,), "[M, D]")
        check.same_device(op, "negatives", negatives, "features", features)
        check.same_dtype(op, "negatives", negatives, "features", features)
        check.size(op, "negatives", negatives, 1, features.shape[-1], "the feature size D")
        check.finite_values(op, "negatives", negatives)
    check.finite_values(op, "features", features)
    _tensor_temperature(op, a["temperature"], "features", features)
    if a["ignore_index"] is not None and a["labels"] is None:
        raise ValueError(
            f"{op}: ignore_index needs labels (without labels, SimCLR, no sample is ignored); "
            f"pass labels or ignore_index=None"
        )
    a["features"] = features.unsqueeze(1) if features.dim() == 2 else features


def _gradcam(a: Arguments) -> None:
    op = "gradcam"
    activations = _features(op, "activations", a["activations"], (4,), "[B, K, H, W]")
    _pixels(op, "activations", activations)
    a["activations"] = activations
    a["gradients"] = _like(op, "gradients", a["gradients"], "activations", activations)
    check.finite_values(op, "activations", activations)
    check.finite_values(op, "gradients", a["gradients"])


def _class_activation_map(a: Arguments) -> None:
    op = "class_activation_map"
    activations = _features(op, "activations", a["activations"], (4,), "[B, K, H, W]")
    weight = _features(op, "fc_weight", a["fc_weight"], (2,), "[C, K]")
    check.same_device(op, "fc_weight", weight, "activations", activations)
    check.same_dtype(op, "fc_weight", weight, "activations", activations)
    check.size(op, "fc_weight", weight, 1, activations.shape[1], "the channels K of activations")
    targets = check.integer(op, "targets", a["targets"])
    check.ndim(op, "targets", targets, (1,), "[B]")
    check.size(op, "targets", targets, 0, activations.shape[0], "one target per map")
    check.same_device(op, "targets", targets, "activations", activations)
    check.index_values(op, "targets", targets, weight.shape[0], "the classes C of fc_weight")
    check.finite_values(op, "activations", activations)
    check.finite_values(op, "fc_weight", weight)
    a.update(activations=activations, fc_weight=weight, targets=targets)


def _crops(op: str, crops: object, batch: int, size: int, device: torch.device) -> torch.Tensor:
    crops = check.integer(op, "crops", crops, "(i, j, height, width) crop boxes")
    check.ndim(op, "crops", crops, (2,), "[B, 4]")
    check.size(op, "crops", crops, 0, batch, "one crop per map")
    check.size(op, "crops", crops, 1, 4, "(i, j, height, width)")
    if crops.device != device:
        raise ValueError(f"{op}: crops is on {crops.device} but the maps are on {device}")
    if check.value_checks_enabled(crops) and batch:
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


def _cgc_loss(a: Arguments) -> None:
    op = "cgc_loss"
    cam_orig = _features(op, "cam_orig", a["cam_orig"], (3,), "[B, h, w]")
    _pixels(op, "cam_orig", cam_orig)
    cam_aug = _like(op, "cam_aug", a["cam_aug"], "cam_orig", cam_orig)
    batch = cam_orig.shape[0]
    crops = _crops(op, a["crops"], batch, a["size"], cam_orig.device)
    flips = check.boolean(op, "flips", a["flips"])
    check.ndim(op, "flips", flips, (1,), "[B]")
    check.size(op, "flips", flips, 0, batch, "one flag per map")
    check.same_device(op, "flips", flips, "cam_orig", cam_orig)
    check.finite_values(op, "cam_orig", cam_orig)
    check.finite_values(op, "cam_aug", cam_aug)
    _tensor_temperature(op, a["temperature"], "cam_orig", cam_orig)
    a.update(cam_orig=cam_orig, cam_aug=cam_aug, crops=crops, flips=flips)


def _saliency_mask(a: Arguments) -> None:
    op = "saliency_mask"
    images = _features(op, "images", a["images"], (4,), "[B, C, H, W]")
    saliency = _features(op, "saliency", a["saliency"], (3,), "[B, h, w]")
    check.size(op, "saliency", saliency, 0, images.shape[0], "one map per image")
    _pixels(op, "images", images)
    _pixels(op, "saliency", saliency)
    check.same_device(op, "saliency", saliency, "images", images)
    check.finite_values(op, "saliency", saliency)
    largest = torch.finfo(images.dtype).max
    if abs(a["fill"]) > largest:
        raise ValueError(
            f"{op}: fill = {a['fill']} overflows the images' dtype {images.dtype} (largest "
            f"finite value {largest:g}); use a fill within ±{largest:g} or convert the images"
        )
    a.update(images=images, saliency=saliency)


# --- the specs ---

ANGULAR_DISTANCE = OpSpec(
    "angular_distance", ("x", "y"), (), _angular_distance, differentiable=("x", "y")
)
AMC_LOSS = OpSpec(
    "amc_loss",
    ("features", "labels"),
    (
        Option("margin", 0.5, check.positive),
        Option("pairs", "all", one_of("all", "halves")),
        Option("reduction", "mean", one_of(*REDUCTIONS)),
    ),
    _amc_loss,
    differentiable=("features",),
)
SUPCON_LOSS = OpSpec(
    "supcon_loss",
    ("features", "labels", "negatives"),
    (
        Option("temperature", 0.1, temperature),
        Option("base_temperature", 0.07, check.positive),
        Option("contrast_mode", "all", one_of("all", "one")),
        Option("normalize", True, one_of(True, False), kernel=bool),
        Option("reduction", "mean", one_of(*REDUCTIONS)),
    ),
    _supcon_loss,
    differentiable=("features", "negatives"),
    saved=("lse",),
    frontend=(
        Option("no_positive", "count", one_of(*NO_POSITIVE)),
        Option("ignore_index", None, optional_index),
    ),
)
GRADCAM = OpSpec(
    "gradcam",
    ("activations", "gradients"),
    (
        Option("weighting", "mean", one_of("mean", "elementwise")),
        Option("relu", True, one_of(True, False), kernel=bool),
        Option("normalize", None, one_of(*GRADCAM_NORMALIZATIONS), kernel=lambda v: v or "none"),
        Option("output_size", None, optional_size, kernel=lambda v: list(v or ())),
    ),
    _gradcam,
    differentiable=("activations", "gradients"),
    saved=("raw", "alpha"),
)
CLASS_ACTIVATION_MAP = OpSpec(
    "class_activation_map",
    ("activations", "fc_weight", "targets"),
    (),
    _class_activation_map,
    differentiable=("activations", "fc_weight"),
)
CGC_LOSS = OpSpec(
    "cgc_loss",
    ("cam_orig", "cam_aug", "crops", "flips"),
    (
        Option("temperature", 0.5, temperature, learnable=True),
        Option("size", 224, check.positive_int),
    ),
    _cgc_loss,
    differentiable=("cam_orig", "cam_aug", "temperature"),
)
SALIENCY_MASK = OpSpec(
    "saliency_mask",
    ("images", "saliency"),
    (
        Option("threshold", 0.5, unit_interval),  # e ∈ [0, 1): outside, all or nothing
        Option("top_fraction", None, optional_fraction, kernel=lambda v: -1.0 if v is None else v),
        Option("fill", 0.0, check.real),
    ),
    _saliency_mask,
    results=2,
)

SPECS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        ANGULAR_DISTANCE,
        AMC_LOSS,
        SUPCON_LOSS,
        GRADCAM,
        CLASS_ACTIVATION_MAP,
        CGC_LOSS,
        SALIENCY_MASK,
    )
}
#: The op list, written once.
OPS: tuple[str, ...] = tuple(SPECS)
