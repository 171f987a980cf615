"""Evaluation of a trained recipe (docs/recipes.md): test accuracy and calibration, the
explanation metrics from Grad-CAM, and the example images of the figures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import metrics as M
from ..nn import GradCAM
from .augment import Augmenter
from .config import TrainConfig
from .data import ImageData, Split, loader
from .models import Net
from .progress import Log, Progress


@dataclass
class Examples:
    """Test images for figures: images [B, 3, S, S] in [0, 1], Grad-CAM maps [B, S, S]
    (ground-truth class, max-normalised), labels, predictions, masks or None."""

    images: torch.Tensor
    maps: torch.Tensor
    labels: torch.Tensor
    predictions: torch.Tensor
    masks: torch.Tensor | None


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: Net,
    split: Split,
    aug: Augmenter,
    batch_size: int,
    device: torch.device,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Logits [N, C] (fp32, on the CPU) of a split's plain views, in eval mode."""
    was_training = model.training
    model.eval()
    batches = loader(split, batch_size, shuffle=False)
    if progress is not None:
        batches = progress(batches, len(batches), "predicting the test split")
    out = [model(aug.plain(images.to(device))).float().cpu() for images, _ in batches]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.fc.out_features)


def _metric_batches(
    data: ImageData, count: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(uint8 images, labels, masks or None) of the first ``count`` test images."""
    done = 0
    for images, labels in loader(data.test, batch_size, shuffle=False):
        if done >= count:
            return
        take = min(len(labels), count - done)
        masks = None if data.test.masks is None else data.test.masks[done : done + take]
        yield images[:take], labels[:take], masks
        done += take


def evaluate(
    model: Net, data: ImageData, config: TrainConfig, device: torch.device, log: Log = print
) -> dict:
    """Accuracy and ECE on the test split; explanation metrics on its first
    ``metric_images`` images, from Grad-CAM (mean weighting, ReLU) at the model's last map.

    Content heatmap and pointing game (data with masks) and insertion / deletion explain the
    ground-truth class (CGC's protocol; the causal games score the top-1 class); Average
    Drop / Increase explain the predicted class (ExCon's). Values are fractions in [0, 1]."""
    model.eval()
    aug = Augmenter(data.mean, data.std, config.image_size)
    progress = Progress(config.quiet, log)
    logits = predict(model, data.test, aug, config.batch_size, device, progress)
    labels = data.test.labels
    result = {
        "accuracy": M.accuracy(logits, labels),
        "ece": M.expected_calibration_error(logits.softmax(dim=1), labels),
    }
    cam = GradCAM(model, model.cam_layer, output_size=config.image_size)
    parts: dict[str, list[torch.Tensor]] = {}
    count = min(config.metric_images, len(data.test.labels))
    batches = progress(
        _metric_batches(data, count, config.batch_size),
        math.ceil(count / config.batch_size),
        "explanation metrics",
    )
    for images, targets, masks in batches:
        x = aug.plain(images.to(device))
        targets = targets.to(device)
        truth = cam.explain(x, targets).maps
        predicted = cam.explain(x).maps
        if masks is not None:
            masks = masks.to(device)
            parts.setdefault("content_heatmap", []).append(M.content_heatmap(truth, masks))
            parts.setdefault("pointing_game", []).append(
                M.pointing_game(truth, masks, config.pointing_tolerance)
            )
        insertion, deletion = M.insertion_deletion_auc(model, x, truth, step=config.insertion_step)
        drop, increase = M.average_drop_increase(model, x, predicted)
        for name, value in (
            ("insertion_auc", insertion),
            ("deletion_auc", deletion),
            ("average_drop", drop),
            ("increase_rate", increase),
        ):
            parts.setdefault(name, []).append(value)
    for name, values in parts.items():
        result[name] = torch.cat(values).float().nanmean().item()
    return result


def examples(model: Net, data: ImageData, config: TrainConfig, device: torch.device) -> Examples:
    """``figure_images`` test images, one per class in turn, with their Grad-CAMs."""
    seen: dict[int, int] = {}
    rank = []
    for label in data.test.labels.tolist():
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    order = sorted(range(len(rank)), key=lambda i: (rank[i], i))
    index = torch.tensor(order[: config.figure_images], dtype=torch.long)
    images = torch.stack([data.test.dataset[int(i)][0] for i in index])
    aug = Augmenter(data.mean, data.std, config.image_size)
    model.eval()
    x = aug.plain(images.to(device))
    cam = GradCAM(model, model.cam_layer, normalize="max", output_size=config.image_size)
    maps, logits, targets = cam.explain(x, data.test.labels[index].to(device))
    masks = None if data.test.masks is None else data.test.masks[index]
    return Examples(
        aug.to_unit(images), maps.cpu(), targets.cpu(), logits.argmax(dim=1).cpu(), masks
    )
