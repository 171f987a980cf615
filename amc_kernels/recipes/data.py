"""Data sets of the recipes. Nothing is ever downloaded (docs/design.md#9-environment).

- ``shapes`` (the default): generated in memory from a seed. Six shape classes at random
  positions, scales, small rotations and colours on textured clutter (a smooth colour field,
  stripes, pixel noise) with Gaussian distractor blobs, and each image's object mask.
- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1 797 images), upsampled.
- ``cifar10`` / ``cifar100``: the standard python batches in a local folder.
- ``imagefolder``: a folder of class subfolders (Tiny ImageNet, CUB, ...), either split into
  ``train/`` and ``val/`` (or ``test/``), or split here by seed.

Images are uint8 [3, S, S]; conversion to float, resizing, augmentation and normalisation happen
on the training device, batched (:mod:`amc_kernels.recipes.augment`).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, default_collate

from .config import TrainConfig

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TEST_FRACTION = 0.2  # digits, and an image folder without train/ and val/


class TensorImages(Dataset):
    """In-memory uint8 images [N, 3, S, S] and labels [N]; batches are fetched by slicing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


@dataclass
class Split:
    """One split: items (uint8 image [3, S, S], label), its labels, object masks if known."""

    dataset: Dataset
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    name: str
    classes: list[str]
    train: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        masks = ", object masks" if self.test.masks is not None else ""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.test)} test images, "
            f"{self.num_classes} classes{masks}"
        )


def loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    workers: int = 0,
) -> DataLoader:
    """Batches (uint8 images [B, 3, S, S], labels [B]); a shuffled order is seeded."""
    tensors = isinstance(split.dataset, TensorImages)
    return DataLoader(
        split.dataset,
        batch_size=batch_size,
        sampler=RandomSampler(split.dataset, generator=torch.Generator().manual_seed(seed))
        if shuffle
        else None,
        drop_last=drop_last,
        num_workers=0 if tensors else workers,
        collate_fn=(lambda batch: batch) if tensors else default_collate,
    )


def load_data(config: TrainConfig) -> ImageData:
    """The data set of a resolved config."""
    size, seed = config.image_size, config.seed
    if config.dataset == "shapes":
        return shapes(config.train_size, config.test_size, size=size, seed=seed)
    if config.dataset == "digits":
        data = digits(size=size, seed=seed)
    elif config.dataset in CIFAR_STATS:
        data = cifar(config.dataset, config.data_dir)
    else:
        data = image_folder(config.data_dir, size=size, seed=seed)
    data.train = _limit(data.train, config.train_size, seed)
    data.test = _limit(data.test, config.test_size, seed + 1)
    return data


# --- shapes ------------------------------------------------------------------------------------


def _triangle(u: torch.Tensor, v: torch.Tensor, circumradius: float) -> torch.Tensor:
    """Signed distance (inside < 0, exact inside, a lower bound outside) to a triangle."""
    normals = [(-math.pi / 2), (math.pi / 6), (5 * math.pi / 6)]
    planes = [u * math.cos(a) + v * math.sin(a) for a in normals]
    return torch.stack(planes).amax(dim=0) - circumradius / 2


def _shape_distance(kind: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance to a shape of circumradius about 1, in shape units (similar areas)."""
    r = torch.sqrt(u * u + v * v)
    if kind == "circle":
        return r - 0.8
    if kind == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.7
    if kind == "triangle":
        return _triangle(u, v, 1.2)
    if kind == "cross":
        bar = torch.maximum(u.abs() - 1.0, v.abs() - 0.32)
        return torch.minimum(bar, torch.maximum(u.abs() - 0.32, v.abs() - 1.0))
    if kind == "ring":
        return (r - 0.7).abs() - 0.2
    return torch.minimum(_triangle(u, v, 1.1), _triangle(-u, -v, 1.1))  # star: a hexagram


def generate_shapes(
    count: int, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 images [N, 3, S, S], labels [N], object masks [N, S, S] bool), fixed by the seed.

    Balanced classes; object radius 18–28 % of the side, rotated by up to ±20°, fully inside
    the image; the object's colour differs from the background's base colour by 0.3–0.5 in
    every channel; up to four distractor blobs of any colour lie under the object.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    n, s = count, size
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]
    centre = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    y, x = centre.view(1, s, 1), centre.view(1, 1, s)

    # background: base colour, a smooth colour field, stripes and pixel noise
    obj_colour = uniform(n, 3, 1, 1)
    shift = uniform(n, 3, 1, 1, low=0.3, high=0.5)
    image = torch.where(obj_colour > 0.5, obj_colour - shift, obj_colour + shift)
    field = torch.randn(n, 3, 4, 4, generator=g) * 0.12
    image = image + F.interpolate(field, size=(s, s), mode="bicubic", align_corners=False)
    angle, freq, phase = (
        uniform(n, 1, 1) * math.pi,
        uniform(n, 1, 1, low=2, high=6),
        uniform(n, 1, 1),
    )
    wave = torch.sin(2 * math.pi * (freq * (x * angle.cos() + y * angle.sin()) + phase))
    image = image + (uniform(n, 1, 1) * 0.12 * wave)[:, None]
    image = image + torch.randn(n, 3, s, s, generator=g) * 0.03

    # distractor blobs
    for _ in range(4):
        bx, by = uniform(n, 1, 1), uniform(n, 1, 1)
        sx, sy = uniform(n, 1, 1, low=0.03, high=0.08), uniform(n, 1, 1, low=0.03, high=0.08)
        opacity = 0.85 * (uniform(n, 1, 1) < 0.75)
        blob = opacity * torch.exp(-((x - bx) ** 2) / (2 * sx**2) - (y - by) ** 2 / (2 * sy**2))
        colour = uniform(n, 3, 1, 1)
        image = image * (1 - blob[:, None]) + colour * blob[:, None]

    # the object
    radius = uniform(n, 1, 1, low=0.18, high=0.28)
    cx = uniform(n, 1, 1, low=0.0, high=1.0) * (1 - 2.4 * radius) + 1.2 * radius
    cy = uniform(n, 1, 1, low=0.0, high=1.0) * (1 - 2.4 * radius) + 1.2 * radius
    turn = uniform(n, 1, 1, low=-0.35, high=0.35)  # ±20°
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u, v = dx * turn.cos() + dy * turn.sin(), dy * turn.cos() - dx * turn.sin()
    distance = torch.empty(n, s, s)
    for k, kind in enumerate(SHAPE_CLASSES):
        chosen = labels == k
        distance[chosen] = _shape_distance(kind, u[chosen], v[chosen]) * radius[chosen]
    alpha = (0.5 - distance * s).clamp(0, 1)[:, None]  # one-pixel anti-aliased edge
    image = image * (1 - alpha) + obj_colour * alpha
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image, labels, alpha[:, 0] > 0.5


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(dim=1).tolist()), tuple(x.std(dim=1).tolist())


def shapes(train_size: int, test_size: int, *, size: int = 32, seed: int = 0) -> ImageData:
    """The generated shapes data set; train and test come from seeds 2·seed and 2·seed + 1."""
    splits = []
    for count, split_seed in ((train_size, 2 * seed), (test_size, 2 * seed + 1)):
        images, labels, masks = generate_shapes(count, size, split_seed)
        splits.append((images, Split(TensorImages(images, labels), labels, masks)))
    mean, std = _stats(splits[0][0])
    return ImageData("shapes", list(SHAPE_CLASSES), splits[0][1], splits[1][1], mean, std)


# --- digits ------------------------------------------------------------------------------------


def digits(*, size: int = 32, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits, bilinearly upsampled to size×size in 3 channels; 20 % test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'amc-kernels[train]'"
        ) from error
    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16
    large = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = round(len(labels) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    mean, std = _stats(images[train])
    return ImageData(
        "digits",
        [str(d) for d in range(10)],
        Split(TensorImages(images[train], labels[train]), labels[train]),
        Split(TensorImages(images[test], labels[test]), labels[test]),
        mean,
        std,
    )


# --- CIFAR ---------------------------------------------------------------------------------------

_CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "meta",
        b"fine_labels",
        b"fine_label_names",
    ),
}


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def cifar(name: str, data_dir: str | None) -> ImageData:
    """CIFAR-10/100 from the python batches in ``data_dir`` (or its cifar-*-python subfolder)."""
    folder_name, train_files, test_files, meta_file, label_key, names_key = _CIFAR_FILES[name]
    if data_dir is None:
        raise FileNotFoundError(
            f"{name}: pass --data-dir, the folder that holds {folder_name}/ (nothing is "
            f"downloaded; get the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    root = Path(data_dir).expanduser()
    candidates = [root / folder_name, root]
    folder = next((c for c in candidates if (c / train_files[0]).is_file()), None)
    if folder is None:
        raise FileNotFoundError(
            f"{name}: no {train_files[0]} in {candidates[0]} or {candidates[1]}; extract the "
            f"python version of the data set there (nothing is ever downloaded)"
        )
    missing = [f for f in (*train_files, *test_files, meta_file) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {folder} lacks {', '.join(missing)}")

    def read(files: list[str]) -> Split:
        batches = [_unpickle(folder / f) for f in files]
        images = torch.cat(
            [torch.as_tensor(b[b"data"], dtype=torch.uint8).view(-1, 3, 32, 32) for b in batches]
        )
        labels = torch.cat([torch.as_tensor(b[label_key], dtype=torch.long) for b in batches])
        return Split(TensorImages(images, labels), labels)

    classes = [n.decode() for n in _unpickle(folder / meta_file)[names_key]]
    mean, std = CIFAR_STATS[name]
    return ImageData(name, classes, read(train_files), read(test_files), mean, std)


# --- image folders -------------------------------------------------------------------------------


def image_folder(data_dir: str | None, *, size: int = 224, seed: int = 0) -> ImageData:
    """Class-subfolder images, resized (shorter side) and centre-cropped to size×size.

    ``data_dir`` holds ``train/`` and ``val/`` (or ``test/``) with the same class subfolders,
    or class subfolders directly (then 20 % of the images, chosen by seed, are the test split).
    Files are found recursively inside each class folder; ImageNet's mean and std normalise.
    """
    try:
        from torchvision import datasets, transforms
    except ImportError as error:
        raise ImportError(
            "the imagefolder data set needs torchvision: pip install 'amc-kernels[train]'"
        ) from error
    if data_dir is None:
        raise FileNotFoundError("imagefolder: pass --data-dir, a folder of class subfolders")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: {root} is not a folder")
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )

    def folder(path: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(path), transform=transform)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"imagefolder: {error}") from None

    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = folder(root / "train"), folder(test_dir)
        if test.classes != train.classes:
            raise ValueError(
                f"imagefolder: {test_dir} has classes {test.classes[:3]}... but {root / 'train'} "
                f"has {train.classes[:3]}...; both need the same class subfolders (Tiny "
                f"ImageNet: move val/images/* into val/<wnid>/ using val_annotations.txt)"
            )
        train_split = Split(train, torch.as_tensor(train.targets, dtype=torch.long))
        test_split = Split(test, torch.as_tensor(test.targets, dtype=torch.long))
        classes = train.classes
    else:
        full = folder(root)
        targets = torch.as_tensor(full.targets, dtype=torch.long)
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
        cut = round(len(targets) * (1 - TEST_FRACTION))
        train_idx, test_idx = order[:cut], order[cut:]
        train_split = Split(Subset(full, train_idx.tolist()), targets[train_idx])
        test_split = Split(Subset(full, test_idx.tolist()), targets[test_idx])
        classes = full.classes
    mean, std = IMAGENET_STATS
    return ImageData("imagefolder", classes, train_split, test_split, mean, std)


def _limit(split: Split, count: int | None, seed: int) -> Split:
    """A seeded random subset of ``count`` items (all of them when None or larger)."""
    if count is None or count >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    index = index.sort().values
    masks = None if split.masks is None else split.masks[index]
    if isinstance(split.dataset, TensorImages):
        dataset: Dataset = TensorImages(split.dataset.images[index], split.dataset.labels[index])
    else:
        dataset = Subset(split.dataset, index.tolist())
    return Split(dataset, split.labels[index], masks)
