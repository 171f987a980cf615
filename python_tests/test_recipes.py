"""Training recipes (docs/design.md#29-command-line): data loaders, augmentation, one short run of
every recipe,
checkpoints, and the `train` / `compare` commands. Everything runs on tiny data in seconds."""

from __future__ import annotations

import argparse
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from amc_kernels import cli
from amc_kernels.recipes import TrainConfig
from amc_kernels.recipes import data as D
from amc_kernels.recipes.augment import Augmenter
from amc_kernels.recipes.config import parse_losses
from amc_kernels.recipes.models import build_model, excon_layer
from amc_kernels.recipes.train import evaluate, load_checkpoint, rampup, train
from amc_kernels.reference.cgc_loss import transform_map

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

TINY = {
    "image_size": 16,
    "train_size": 24,
    "test_size": 12,
    "width": 4,
    "epochs": 1,
    "batch_size": 8,
    "metric_images": 6,
    "figure_images": 3,
    "quiet": True,
    "threads": 1,  # tiny tensors run fastest on one thread
}


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """Runs set torch's thread count (``threads``); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- data -----------------------------------------------------------------------------------


def test_shapes_are_deterministic_by_seed() -> None:
    images, labels, masks = D.generate_shapes(24, size=16, seed=3)
    again = D.generate_shapes(24, size=16, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    assert torch.equal(masks, again[2])
    assert not torch.equal(images, D.generate_shapes(24, size=16, seed=4)[0])
    assert images.shape == (24, 3, 16, 16) and images.dtype == torch.uint8
    assert masks.shape == (24, 16, 16) and masks.dtype == torch.bool
    assert labels.bincount().tolist() == [4] * len(D.SHAPE_CLASSES)
    assert (masks.flatten(1).sum(dim=1) > 0).all()  # every image shows its object


def test_shapes_data_set_splits_and_statistics() -> None:
    data = D.shapes(30, 12, size=16, seed=0)
    assert (len(data.train), len(data.test)) == (30, 12)
    assert data.classes == list(D.SHAPE_CLASSES) and data.test.masks is not None
    assert not torch.equal(data.train.dataset.images[:12], data.test.dataset.images)
    assert all(0 < m < 1 for m in data.mean) and all(0 < s < 1 for s in data.std)
    images, labels = next(iter(D.loader(data.train, 8, shuffle=True, seed=1)))
    assert images.shape == (8, 3, 16, 16) and labels.shape == (8,)
    again = next(iter(D.loader(data.train, 8, shuffle=True, seed=1)))
    assert torch.equal(images, again[0])  # a seeded order


def test_digits_from_scikit_learn() -> None:
    pytest.importorskip("sklearn")
    data = D.digits(size=16, seed=0)
    assert (len(data.train), len(data.test)) == (1438, 359)
    assert data.train.dataset.images.shape[1:] == (3, 16, 16)
    assert data.num_classes == 10 and data.test.masks is None
    assert torch.equal(D.digits(size=16, seed=0).test.labels, data.test.labels)


def write_cifar(root: Path, name: str) -> dict[str, np.ndarray]:
    """Tiny files in the standard python format: 2 images per train batch, 3 test images."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, train_files, test_file = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
        )
        label_key, meta_file, names_key, classes = b"labels", "batches.meta", b"label_names", 10
    else:
        folder, train_files, test_file = "cifar-100-python", ["train"], "test"
        label_key, meta_file, names_key, classes = b"fine_labels", "meta", b"fine_label_names", 100
    (root / folder).mkdir(parents=True)
    written = {}
    for file in (*train_files, test_file):
        count = 3 if file == test_file else 2
        pixels = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=count).tolist()
        with (root / folder / file).open("wb") as f:
            pickle.dump({b"data": pixels, label_key: labels}, f)
        written[file] = pixels
    with (root / folder / meta_file).open("wb") as f:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(classes)]}, f)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_local_python_batches(tmp_path: Path, name: str) -> None:
    written = write_cifar(tmp_path, name)
    data = D.cifar(name, str(tmp_path))
    train_count = 10 if name == "cifar10" else 2
    assert (len(data.train), len(data.test)) == (train_count, 3)
    assert data.num_classes == (10 if name == "cifar10" else 100)
    first = written["data_batch_1" if name == "cifar10" else "train"][0]
    image = data.train.dataset.images[0]
    assert image[0, 0, 0] == first[0] and image[1, 0, 0] == first[1024]  # channel-planar rows
    assert image[2, 31, 31] == first[3071]
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert len(D.cifar(name, str(tmp_path / folder)).test) == 3  # the batch folder itself


def test_cifar_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing is ever downloaded"):
        D.cifar("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        D.cifar("cifar100", None)
    config = TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "absent")).resolved()
    with pytest.raises(FileNotFoundError, match="cifar10"):
        D.load_data(config)


def write_images(root: Path, classes: list[str], per_class: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name / "nested").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / "nested" / f"{i}.png")


def test_image_folder_with_train_and_val(tmp_path: Path) -> None:
    write_images(tmp_path / "train", ["cat", "dog"], 3, (20, 30))
    write_images(tmp_path / "val", ["cat", "dog"], 2, (12, 12))
    data = D.image_folder(str(tmp_path), size=16)
    assert (len(data.train), len(data.test)) == (6, 4) and data.classes == ["cat", "dog"]
    images, labels = next(iter(D.loader(data.test, 4, shuffle=False)))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1]


def test_image_folder_split_by_seed_and_errors(tmp_path: Path) -> None:
    write_images(tmp_path / "flat", ["a", "b", "c"], 5, (16, 16))
    data = D.image_folder(str(tmp_path / "flat"), size=8, seed=1)
    assert (len(data.train), len(data.test)) == (12, 3)
    limited = D._limit(data.train, 5, seed=0)
    assert len(limited) == 5 and len(limited.dataset) == 5
    write_images(tmp_path / "odd" / "train", ["a", "b"], 1, (8, 8))
    write_images(tmp_path / "odd" / "val", ["images"], 1, (8, 8))
    with pytest.raises(ValueError, match="same class subfolders"):
        D.image_folder(str(tmp_path / "odd"), size=8)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        D.image_folder(str(tmp_path / "missing"), size=8)


# --- augmentation and models ----------------------------------------------------------------


def test_cgc_view_applies_the_recorded_crop_and_flip() -> None:
    size = 16
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = (x * 13 + y * 3).float() % 256  # distinct values; uint8 images of one channel
    images = pattern.to(torch.uint8).expand(6, 3, size, size).contiguous()
    aug = Augmenter((0.0,) * 3, (1.0,) * 3, size, seed=0)
    views, crops, flips = aug.cgc_view(images, (1.0, 1.0))  # whole-frame crops: exact
    assert crops.tolist() == [[0, 0, size, size]] * 6
    for b in range(6):
        expected = transform_map(
            images[b, 0].float() / 255, crops[b].tolist(), bool(flips[b]), size
        )
        torch.testing.assert_close(views[b, 0], expected)
    smooth = (torch.sin(x / 3.0) + torch.cos(y / 4.0) + 2).div(4).mul(255).to(torch.uint8)
    images = smooth.expand(8, 3, size, size).contiguous()
    views, crops, flips = aug.cgc_view(images, (0.3, 0.6))
    assert ((crops[:, 2] < size) | (crops[:, 3] < size)).all() and flips.any() and not flips.all()
    for b in range(8):
        expected = transform_map(
            images[b, 0].float() / 255, crops[b].tolist(), bool(flips[b]), size
        )
        # away from the crop's border the two samplings agree up to bilinear rounding
        torch.testing.assert_close(views[b, 0, 4:-4, 4:-4], expected[4:-4, 4:-4], atol=0.03, rtol=0)


def test_cgc_flip_bug_flags_more_flips_than_it_makes() -> None:
    aug = Augmenter((0.0,) * 3, (1.0,) * 3, 8, seed=0)
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).expand(400, 3, 8, 8)
    views, _, flips = aug.cgc_view(images, (1.0, 1.0), flip_bug=True)
    flipped = views[:, 0, 0, 0] > views[:, 0, 0, -1]
    assert flips.float().mean().item() == pytest.approx(0.5, abs=0.08)
    assert flipped.float().mean().item() == pytest.approx(0.25, abs=0.08)
    assert not (flipped & ~flips).any()  # a flipped image is always flagged


def test_views_keep_shape_and_are_seeded() -> None:
    images = D.generate_shapes(8, size=16, seed=0)[0]
    one, two = (Augmenter((0.5,) * 3, (0.25,) * 3, 16, seed=5) for _ in range(2))
    for view in ("plain", "standard", "contrastive"):
        a, b = getattr(one, view)(images), getattr(two, view)(images)
        assert a.shape == (8, 3, 16, 16) and torch.equal(a, b)
    crop = Augmenter((0.5,) * 3, (0.25,) * 3, 24, kind="crop")
    assert crop.standard(images).shape == (8, 3, 24, 24)  # resized on the fly


@pytest.mark.parametrize(
    ("model", "size", "layer"),
    [
        ("small-cnn", 32, "body.cam"),
        ("resnet18", 32, "body.layer2.1.conv2"),
        ("resnet50", 64, "body.layer4.2.conv3"),
    ],
)
def test_models_expose_the_explained_map(model: str, size: int, layer: str) -> None:
    config = TrainConfig(model=model, image_size=size).resolved()
    net = build_model(config, 5).eval()
    fmap, embedding = net.features(torch.randn(2, 3, size, size))
    assert embedding.shape == (2, net.feature_dim) and fmap.shape[:2] == (2, net.feature_dim)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert excon_layer(config) == layer and net.cam_layer in dict(net.named_modules())


# --- recipes --------------------------------------------------------------------------------


def test_rampup_is_the_official_schedule() -> None:
    assert rampup(0, 50) == pytest.approx(math.exp(-5))
    assert rampup(25, 50) == pytest.approx(math.exp(-1.25))
    assert rampup(50, 50) == 1.0 and rampup(80, 50) == 1.0 and rampup(0, 0) == 1.0


def test_resolved_defaults_scale_with_the_run() -> None:
    config = TrainConfig(epochs=8).resolved()
    assert (config.amc_rampup, config.excon_start, config.linear_epochs) == (8.0, 2, 2)
    assert config.insertion_step == 32 and config.model == "small-cnn"
    cifar = TrainConfig(dataset="cifar10").resolved()
    assert (cifar.model, cifar.cifar_stem, cifar.epochs, cifar.amc_rampup) == (
        "resnet18",
        True,
        200,
        50.0,
    )
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="triplet").resolved()
    assert parse_losses("ce, amc") == ["ce", "amc"]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated subset"):
        parse_losses("ce,nope")


RECIPES = [
    {"loss": "ce"},
    {"loss": "amc"},
    {"loss": "amc", "amc_pairs": "all", "amc_labels": "true"},
    {"loss": "supcon", "linear_epochs": 1},
    {"loss": "excon", "excon_start": 0},
    {"loss": "cgc"},
    {"loss": "cgc", "cgc_cam": "gradcam", "cgc_flip_bug": True},
]


@pytest.mark.parametrize("options", RECIPES, ids=lambda o: "-".join(map(str, o.values())))
def test_each_recipe_runs_end_to_end(tmp_path: Path, options: dict) -> None:
    result = train(TrainConfig(**TINY, **options, out=str(tmp_path)))
    history = result.history
    assert history and all(math.isfinite(h["loss"]) for h in history)
    if options["loss"] == "excon":
        assert "kept" in history[0]  # the masked views were made and tested
        assert [h["phase"] for h in history] == ["encoder", "classifier"]
    for key in (
        "accuracy",
        "ece",
        "content_heatmap",
        "pointing_game",
        "insertion_auc",
        "deletion_auc",
        "average_drop",
        "increase_rate",
    ):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"] == result.metrics and summary["config"]["loss"] == options["loss"]
    assert (tmp_path / "gradcam.png").stat().st_size > 0


def test_checkpoint_reloads_and_reproduces_its_metrics(tmp_path: Path) -> None:
    result = train(TrainConfig(**TINY, loss="amc", out=str(tmp_path)))
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert raw["metrics"] == result.metrics
    model, config, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert config == result.config and checkpoint["classes"] == list(D.SHAPE_CLASSES)
    again = evaluate(model, D.load_data(config), config, torch.device("cpu"))
    for key, value in again.items():
        assert value == pytest.approx(result.metrics[key], abs=1e-6), key


# --- the command line -----------------------------------------------------------------------


def flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def test_cli_train_writes_its_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--loss", "ce", *flags(TINY), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"accuracy"' in out and "checkpoint.pt" in out
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "checkpoint.pt", "gradcam.png"}


def test_cli_compare_prints_the_table_and_writes_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", "--losses", "ce,cgc", *flags(TINY), "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| loss"))
    assert "accuracy %" in header and "content heatmap %" in header
    assert any(line.startswith("| cgc ") for line in out.splitlines())
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "ce" / "checkpoint.pt").exists() and (
        tmp_path / "cgc" / "metrics.json"
    ).exists()
    assert set(json.loads((tmp_path / "comparison.json").read_text())) == {"ce", "cgc"}


def test_cli_reports_missing_data_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 2
    assert "nothing is ever downloaded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "--losses", "ce,triplet"])
    assert "comma-separated subset" in capsys.readouterr().err
