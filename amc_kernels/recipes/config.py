"""Settings of a recipe run, their per-dataset defaults, and their command-line flags.

A field left at None takes the default of its data set (:data:`DATASET_DEFAULTS`):
CPU-sized for the embedded ``shapes`` and ``digits``, GPU-sized for ``cifar10``, ``cifar100``
and ``imagefolder``. :meth:`TrainConfig.resolved` fills them in; a checkpoint stores the
resolved settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .._spec import AMC_LOSS, CGC_LOSS, SALIENCY_MASK, SUPCON_LOSS

LOSSES = ("ce", "amc", "supcon", "excon", "cgc")
DATASETS = ("shapes", "digits", "cifar10", "cifar100", "imagefolder")
MODELS = ("small-cnn", "resnet18", "resnet50")

#: Per-dataset defaults of the fields left at None.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "shapes": {
        "image_size": 32,
        "train_size": 3000,
        "test_size": 1000,
        "model": "small-cnn",
        "epochs": 10,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "augment": "translate",
        "flip": True,
    },
    "digits": {
        "image_size": 32,
        "model": "small-cnn",
        "epochs": 15,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "augment": "translate",
        "flip": False,
    },
    "cifar10": {
        "image_size": 32,
        "model": "resnet18",
        "epochs": 200,
        "batch_size": 256,
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 5e-4,
        "augment": "translate",
        "flip": True,
    },
    "imagefolder": {
        "image_size": 224,
        "model": "resnet50",
        "epochs": 90,
        "batch_size": 256,
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 1e-4,
        "augment": "crop",
        "flip": True,
    },
}
DATASET_DEFAULTS["cifar100"] = DATASET_DEFAULTS["cifar10"]


@dataclass
class TrainConfig:
    """Every setting of one recipe run (see ``amc-kernels train --help`` for each meaning)."""

    loss: str = "ce"
    dataset: str = "shapes"
    data_dir: str | None = None
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    model: str | None = None
    width: int = 16
    cifar_stem: bool | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    augment: str | None = None
    flip: bool | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    amp: bool = False
    amc_weight: float = 10.0
    amc_rampup: float | None = None
    amc_labels: str = "pred"
    amc_pairs: str = "halves"
    amc_margin: float = AMC_LOSS.defaults.margin
    temperature: float = SUPCON_LOSS.defaults.temperature
    base_temperature: float = SUPCON_LOSS.defaults.base_temperature
    linear_epochs: int | None = None
    excon_start: int | None = None
    excon_threshold: float = SALIENCY_MASK.defaults.threshold
    excon_negatives: bool = True
    cgc_weight: float = 0.5
    cgc_temperature: float = CGC_LOSS.defaults.temperature
    cgc_cam: str = "cam"
    cgc_scale: tuple[float, float] = (0.08, 1.0)
    cgc_flip_bug: bool = False
    metric_images: int = 512
    insertion_step: int | None = None
    pointing_tolerance: int = 0
    figure_images: int = 8
    out: str = "out/train"
    quiet: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with every None filled in from the data set's defaults and the run length."""
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        values = dataclasses.asdict(self)
        for name, default in DATASET_DEFAULTS[self.dataset].items():
            if values[name] is None:
                values[name] = default
        if values["model"] not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {values['model']!r}")
        epochs = values["epochs"]
        if values["cifar_stem"] is None:
            values["cifar_stem"] = values["image_size"] <= 64
        if values["amc_rampup"] is None:  # official: 50 epochs, capped at the run's length
            values["amc_rampup"] = float(min(50, epochs))
        if values["excon_start"] is None:  # official CIFAR-100: explanations from epoch 50 of 200
            values["excon_start"] = math.floor(epochs / 4)
        if values["linear_epochs"] is None:
            values["linear_epochs"] = max(2, epochs // 4)
        if values["insertion_step"] is None:  # 32 steps, as RISE's 224·8 px of 224² is 28
            values["insertion_step"] = max(1, values["image_size"] ** 2 // 32)
        values["cgc_scale"] = tuple(values["cgc_scale"])
        return TrainConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only, so that checkpoints load with ``weights_only=True``."""
        values = dataclasses.asdict(self)
        values["cgc_scale"] = list(values["cgc_scale"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in names})
        config.cgc_scale = tuple(config.cgc_scale)
        return config


def _scale(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        pair = float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if not 0 < pair[0] <= pair[1] <= 1:
        raise argparse.ArgumentTypeError(f"need 0 < LOW ≤ HIGH ≤ 1, got {text!r}")
    return pair


def parse_losses(text: str) -> list[str]:
    """``--losses``: a comma-separated subset of :data:`LOSSES`."""
    losses = [name.strip() for name in text.split(",") if name.strip()]
    if not losses or any(name not in LOSSES for name in losses):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(LOSSES)}, got {text!r}"
        )
    return losses


def add_arguments(parser: argparse.ArgumentParser, *, compare: bool) -> None:
    """The flags of ``amc-kernels train`` (``compare=False``) or ``compare``."""
    d = TrainConfig()
    by = "default: per data set, see README"
    if compare:
        parser.add_argument(
            "--losses",
            type=parse_losses,
            default=["ce", "amc", "cgc"],
            help="comma-separated recipes (default: ce,amc,cgc)",
        )
    else:
        parser.add_argument("--loss", choices=LOSSES, default=d.loss, help="the recipe")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="default: shapes")
    data.add_argument(
        "--data-dir",
        help="cifar10/cifar100: the folder of cifar-10-batches-py / cifar-100-python (or that "
        "folder); imagefolder: a folder of class subfolders, or with train/ and val/ (or test/)",
    )
    data.add_argument("--image-size", type=int, help=f"side in pixels ({by})")
    data.add_argument("--train-size", type=int, help="shapes: images generated; else: a limit")
    data.add_argument("--test-size", type=int, help="shapes: images generated; else: a limit")
    data.add_argument("--augment", choices=("translate", "crop"), help=by)
    data.add_argument("--flip", action=argparse.BooleanOptionalAction, help=by)
    data.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers")
    model = parser.add_argument_group("model and optimisation")
    model.add_argument("--model", choices=MODELS, help=by)
    model.add_argument("--width", type=int, default=d.width, help="small-cnn base width")
    model.add_argument(
        "--cifar-stem",
        action=argparse.BooleanOptionalAction,
        help="ResNet 3×3 stride-1 stem without max-pool (default: image size ≤ 64)",
    )
    model.add_argument("--epochs", type=int, help=by)
    model.add_argument("--batch-size", type=int, help=by)
    model.add_argument("--optimizer", choices=("adam", "sgd"), help=by)
    model.add_argument("--lr", type=float, help=f"peak learning rate, cosine decay ({by})")
    model.add_argument("--weight-decay", type=float, help=by)
    model.add_argument("--seed", type=int, default=d.seed, help="seeds data, model and order")
    model.add_argument("--device", default=d.device, help="auto (cuda if present), cpu, cuda:N")
    model.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    model.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    amc = parser.add_argument_group("amc")
    amc.add_argument(
        "--amc-weight", type=float, default=d.amc_weight, help="λ after ramp-up (official 100·0.1)"
    )
    amc.add_argument(
        "--amc-rampup",
        type=float,
        help="ramp-up epochs T of exp(−5(1−t/T)²) (default: the official 50, at most --epochs)",
    )
    amc.add_argument(
        "--amc-labels",
        choices=("pred", "true"),
        default=d.amc_labels,
        help="S_ij from the detached predictions (official) or the labels (default: pred)",
    )
    amc.add_argument(
        "--amc-pairs",
        choices=("halves", "all"),
        default=d.amc_pairs,
        help="(k, k+N/2) pairs (official) or every pair (default: halves)",
    )
    amc.add_argument(
        "--amc-margin", type=float, default=d.amc_margin, help=f"radians ({d.amc_margin})"
    )
    con = parser.add_argument_group("supcon and excon")
    con.add_argument(
        "--temperature", type=float, default=d.temperature, help=f"T ({d.temperature})"
    )
    con.add_argument(
        "--base-temperature",
        type=float,
        default=d.base_temperature,
        help=f"T_base ({d.base_temperature})",
    )
    con.add_argument(
        "--linear-epochs", type=int, help="supcon: classifier epochs after (default: epochs/4, ≥ 2)"
    )
    con.add_argument(
        "--excon-start", type=int, help="first epoch with masked views (default: epochs/4)"
    )
    con.add_argument(
        "--excon-threshold",
        type=float,
        default=d.excon_threshold,
        help=f"keep pixels of min-max saliency above this ({d.excon_threshold})",
    )
    con.add_argument(
        "--excon-negatives",
        action=argparse.BooleanOptionalAction,
        default=d.excon_negatives,
        help="failed masked views as extra negatives (official --negative_pair 1)",
    )
    cgc = parser.add_argument_group("cgc")
    cgc.add_argument("--cgc-weight", type=float, default=d.cgc_weight, help="λ (README: 0.5)")
    cgc.add_argument(
        "--cgc-temperature",
        type=float,
        default=d.cgc_temperature,
        help=f"τ (the CGC README: {d.cgc_temperature})",
    )
    cgc.add_argument(
        "--cgc-cam",
        choices=("cam", "gradcam"),
        default=d.cgc_cam,
        help="cam: class_activation_map (no double backward); gradcam: GradCAM(create_graph)",
    )
    cgc.add_argument(
        "--cgc-scale", type=_scale, default=d.cgc_scale, help="crop area range (default 0.08,1)"
    )
    cgc.add_argument(
        "--cgc-flip-bug",
        action="store_true",
        help="reproduce the official flip-flag bug (flag set 50 %%, image flipped 25 %%)",
    )
    ev = parser.add_argument_group("evaluation and outputs")
    ev.add_argument(
        "--metric-images",
        type=int,
        default=d.metric_images,
        help="test images for the explanation metrics",
    )
    ev.add_argument("--insertion-step", type=int, help="pixels per step (default: H·W/32)")
    ev.add_argument(
        "--pointing-tolerance",
        type=int,
        default=d.pointing_tolerance,
        help="pointing game: a hit within this many pixels of the mask (0)",
    )
    ev.add_argument(
        "--figure-images", type=int, default=d.figure_images, help="columns of the figures"
    )
    ev.add_argument(
        "--out", default="out/demo" if compare else d.out, help="folder for every output"
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars or epoch lines")


def config_from_args(args: argparse.Namespace, loss: str | None = None) -> TrainConfig:
    """The TrainConfig of parsed ``train``/``compare`` arguments (``loss`` overrides --loss)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if loss is not None:
        values["loss"] = loss
    return TrainConfig(**values)
