"""The training recipes, their evaluation, and checkpoints (docs/design.md#29-command-line,
SOURCES.md).

Recipes (``config.loss``), all through the package's public losses and so its fastest backend:

- ``ce``: cross-entropy on the standard view.
- ``amc``: CE + w(t)·amc_loss(e, ŷ) on the GAP embedding e, ŷ the detached predictions
  (``amc_labels="pred"``, the official training script) or the labels; w(t) = λ·rampup(t),
  rampup(t) = exp(−5(1 − t/T)²) for t < T, then 1 (official λ = 100·0.1 = 10, T = 50 of 200
  epochs; here t counts fractional epochs and T defaults to min(50, epochs)).
- ``supcon``: SupCon on the projection head over two contrastive views for ``epochs`` encoder
  epochs, then ``linear_epochs`` of CE for the linear classifier on the frozen encoder.
- ``excon``: ExCon's alternation of an encoder epoch and a classifier epoch. From epoch
  ``excon_start`` on, Grad-CAM of the classifier (ground-truth class, no ReLU, ExCon's layer) on
  the plain view gives :func:`amc_kernels.saliency_mask`; the masked view replaces the first
  view where the classifier still predicts the label, and the failed masked views join every
  denominator as extra negatives (``supcon_loss(negatives=...)``), twice, as the official code
  appends them to both view batches.
- ``cgc``: CE on the standard view, the original and CGC's augmented view, plus
  λ·cgc_loss of the ReLU'd CAMs of the original and augmented views for the original's
  predicted class, with the crops and flips recorded by the augmentation. CAMs come from
  :func:`amc_kernels.class_activation_map` (``cgc_cam="cam"``, no double backward) or
  :class:`amc_kernels.nn.GradCAM` with ``create_graph=True`` (elementwise weighting, as the
  official code).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from ..functional import amc_loss, cgc_loss, class_activation_map, saliency_mask, supcon_loss
from ..nn import GradCAM
from .augment import Augmenter
from .config import TrainConfig
from .data import ImageData, load_data, loader
from .evaluation import Examples, evaluate, examples, predict
from .figures import gradcam_grid
from .models import Net, build_model, excon_layer, projection_head
from .progress import Progress

CHECKPOINT_FORMAT = "amc-kernels-recipe-1"
MIN_LR_RATIO = 1e-3  # cosine decay to lr·1e-3, as SupContrast's eta_min

Log = Callable[[str], None]


def rampup(t: float, length: float) -> float:
    """The official AMC ramp: exp(−5(1 − t/T)²) for t < T, else 1."""
    if length <= 0 or t >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - t / length) ** 2)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _cosine(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class RunResult:
    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    model: Net
    head: nn.Module | None
    examples: Examples
    classes: list[str]
    files: dict[str, str] = field(default_factory=dict)


class Trainer:
    """One recipe run on one data set: :meth:`fit` trains, recording the history."""

    def __init__(self, config: TrainConfig, data: ImageData, device: torch.device, log: Log):
        self.config, self.data, self.device, self.log = config, data, device, log
        self.progress = Progress(config.quiet, log)
        self.model = build_model(config, data.num_classes).to(device)
        two_stage = config.loss in ("supcon", "excon")
        self.head = projection_head(self.model.feature_dim).to(device) if two_stage else None
        self.aug = Augmenter(
            data.mean,
            data.std,
            config.image_size,
            kind=config.augment,
            flip=config.flip,
            seed=config.seed,
        )
        drop_last = len(data.train) >= config.batch_size
        self.train_loader = loader(
            data.train,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            drop_last=drop_last,
            workers=config.workers,
        )
        steps = len(self.train_loader)
        if two_stage:
            body = [*self.model.body.parameters(), *self.head.parameters()]
            self.optimizer = _optimizer(body, config)
            self.schedule = _cosine(self.optimizer, config.epochs * steps)
            self.classifier_optimizer = _optimizer(list(self.model.fc.parameters()), config)
            classifier_epochs = config.linear_epochs if config.loss == "supcon" else config.epochs
            self.classifier_schedule = _cosine(self.classifier_optimizer, classifier_epochs * steps)
        else:
            self.optimizer = _optimizer(list(self.model.parameters()), config)
            self.schedule = _cosine(self.optimizer, config.epochs * steps)
        if config.loss == "excon":
            self.excon_cam = GradCAM(self.model, excon_layer(config), relu=False)
        if config.loss == "cgc" and config.cgc_cam == "gradcam":
            self.cgc_cam = GradCAM(self.model, self.model.cam_layer, weighting="elementwise")
        self.history: list[dict[str, Any]] = []

    def autocast(self) -> AbstractContextManager:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        c = self.config
        if c.loss in ("ce", "amc", "cgc"):
            step = {"ce": self.ce_step, "amc": self.amc_step, "cgc": self.cgc_step}[c.loss]
            for epoch in range(c.epochs):
                self._epoch("train", epoch, c.epochs, step, evaluate=True)
        elif c.loss == "supcon":
            for epoch in range(c.epochs):
                self._epoch("encoder", epoch, c.epochs, self.encoder_step, evaluate=False)
            for epoch in range(c.linear_epochs):
                self._epoch("classifier", epoch, c.linear_epochs, self.classifier_step, True)
        else:
            for epoch in range(c.epochs):
                self._epoch("encoder", epoch, c.epochs, self.encoder_step, evaluate=False)
                self._epoch("classifier", epoch, c.epochs, self.classifier_step, evaluate=True)
        return self.history

    def _epoch(
        self,
        phase: str,
        epoch: int,
        epochs: int,
        step: Callable[[torch.Tensor, torch.Tensor, float], dict[str, torch.Tensor]],
        evaluate: bool,
    ) -> None:
        start = time.perf_counter()
        self.model.train(phase != "classifier")
        if self.head is not None:
            self.head.train(phase == "encoder")
        totals: dict[str, torch.Tensor] = {}
        steps = len(self.train_loader)
        for i, (images, labels) in enumerate(self._progress(phase, epoch, epochs)):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            parts = step(images, labels, epoch + i / steps)
            for name, value in parts.items():
                totals[name] = totals.get(name, 0) + value.detach().float()
        record: dict[str, Any] = {"phase": phase, "epoch": epoch + 1}
        record.update({k: round(float(v) / max(steps, 1), 5) for k, v in totals.items()})
        if evaluate:
            record["test_accuracy"] = round(self.test_accuracy(), 5)
        record["seconds"] = round(time.perf_counter() - start, 2)
        self.history.append(record)
        if not self.config.quiet:
            values = ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("phase", "epoch"))
            self.log(f"[{self.config.loss}] {phase} epoch {epoch + 1}/{epochs}: {values}")

    def _progress(self, phase: str, epoch: int, epochs: int) -> Iterator:
        desc = f"[{self.config.loss}] {phase} epoch {epoch + 1}/{epochs}"
        return self.progress(self.train_loader, len(self.train_loader), desc)

    def _update(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    # --- the recipes' steps ------------------------------------------------------------------

    def ce_step(self, images: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
        with self.autocast():
            loss = F.cross_entropy(self.model(self.aug.standard(images)), labels)
        self._update(loss, self.optimizer, self.schedule)
        return {"loss": loss}

    def amc_step(self, images: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
        c = self.config
        with self.autocast():
            _, embedding = self.model.features(self.aug.standard(images))
            logits = self.model.fc(embedding)
            ce = F.cross_entropy(logits, labels)
            targets = logits.detach().argmax(dim=1) if c.amc_labels == "pred" else labels
            amc = amc_loss(embedding, targets, margin=c.amc_margin, pairs=c.amc_pairs)
            loss = ce + c.amc_weight * rampup(t, c.amc_rampup) * amc
        self._update(loss, self.optimizer, self.schedule)
        return {"loss": loss, "ce": ce, "amc": amc}

    def cgc_step(self, images: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
        c = self.config
        original = self.aug.plain(images)
        augmented, crops, flips = self.aug.cgc_view(images, c.cgc_scale, c.cgc_flip_bug)
        with self.autocast():
            ce = F.cross_entropy(self.model(self.aug.standard(images)), labels)
            if c.cgc_cam == "cam":
                fmap_o, emb_o = self.model.features(original)
                fmap_a, emb_a = self.model.features(augmented)
                logits_o, logits_a = self.model.fc(emb_o), self.model.fc(emb_a)
                targets = logits_o.detach().argmax(dim=1)
                weight = self.model.fc.weight.to(fmap_o.dtype)
                cam_o = class_activation_map(fmap_o, weight, targets).relu()
                cam_a = class_activation_map(fmap_a, weight, targets).relu()
            else:
                cam_o, logits_o, targets = self.cgc_cam.explain(original, create_graph=True)
                cam_a, logits_a, _ = self.cgc_cam.explain(augmented, targets, create_graph=True)
            ce = ce + F.cross_entropy(logits_o, labels) + F.cross_entropy(logits_a, labels)
            cgc = cgc_loss(
                cam_o, cam_a, crops, flips, temperature=c.cgc_temperature, size=c.image_size
            )
            loss = ce + c.cgc_weight * cgc
        self._update(loss, self.optimizer, self.schedule)
        return {"loss": loss, "ce": ce, "cgc": cgc}

    def encoder_step(self, images: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
        c = self.config
        first, second = self.aug.contrastive(images), self.aug.contrastive(images)
        background = first[:0]
        parts: dict[str, torch.Tensor] = {}
        if c.loss == "excon" and t >= c.excon_start:
            plain = self.aug.plain(images)
            self.model.eval()
            maps = self.excon_cam.explain(plain, labels).maps
            masked, _ = saliency_mask(plain, maps, threshold=c.excon_threshold)
            with torch.no_grad(), self.autocast():
                kept = self.model(masked).argmax(dim=1) == labels
            self.model.train()
            first = torch.where(kept[:, None, None, None], masked, first)
            if c.excon_negatives:
                background = masked[~kept]
            parts["kept"] = kept.float().mean()
        n = len(labels)
        with self.autocast():
            _, embedding = self.model.features(torch.cat([first, second, background]))
            z = self.head(embedding)
            views = torch.stack([z[:n], z[n : 2 * n]], dim=1)
            negatives = z[2 * n :].repeat(2, 1) if len(background) else None
            loss = supcon_loss(
                views,
                labels,
                temperature=c.temperature,
                base_temperature=c.base_temperature,
                negatives=negatives,
            )
        self._update(loss, self.optimizer, self.schedule)
        return {"loss": loss, **parts}

    def classifier_step(self, images: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
        with torch.no_grad(), self.autocast():
            _, embedding = self.model.features(self.aug.standard(images))
        with self.autocast():
            loss = F.cross_entropy(self.model.fc(embedding.float()), labels)
        self._update(loss, self.classifier_optimizer, self.classifier_schedule)
        return {"loss": loss}

    @torch.no_grad()
    def test_accuracy(self) -> float:
        logits = predict(
            self.model, self.data.test, self.aug, self.config.batch_size, self.device,
            self.progress,
        )  # fmt: skip
        return M.accuracy(logits, self.data.test.labels)


# --- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, result: RunResult, data: ImageData) -> None:
    """Weights, resolved settings and metrics, loadable with ``torch.load(weights_only=True)``."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": result.config.to_dict(),
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "model": result.model.state_dict(),
            "head": None if result.head is None else result.head.state_dict(),
            "metrics": result.metrics,
        },
        path,
    )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Net, TrainConfig, dict[str, Any]]:
    """(model in eval mode, its resolved TrainConfig, the whole checkpoint dict)."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an amc-kernels recipe checkpoint")
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(config, len(checkpoint["classes"])).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config, checkpoint


# --- the entry point ----------------------------------------------------------------------------


def train(
    config: TrainConfig,
    data: ImageData | None = None,
    *,
    log: Log = print,
    save: bool = True,
) -> RunResult:
    """Run one recipe: train, evaluate, and (``save``) write metrics.json, checkpoint.pt and
    gradcam.png under ``config.out``. ``data`` reuses an already loaded data set."""
    config = config.resolved()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    if data is None:
        data = load_data(config)
    torch.manual_seed(config.seed)
    if not config.quiet:
        log(f"[{config.loss}] {data.describe()}; {config.model} on {device}")
    start = time.perf_counter()
    trainer = Trainer(config, data, device, log)
    history = trainer.fit()
    train_seconds = time.perf_counter() - start
    metrics = evaluate(trainer.model, data, config, device, log)
    metrics["train_seconds"] = round(train_seconds, 2)
    metrics["eval_seconds"] = round(time.perf_counter() - start - train_seconds, 2)
    result = RunResult(
        config,
        metrics,
        history,
        trainer.model,
        trainer.head,
        examples(trainer.model, data, config, device),
        list(data.classes),
    )
    if save:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "metrics": out / "metrics.json",
            "checkpoint": out / "checkpoint.pt",
            "figure": out / "gradcam.png",
        }
        summary = {
            "loss": config.loss,
            "dataset": data.describe(),
            "device": str(device),
            "metrics": metrics,
            "history": history,
            "config": config.to_dict(),
        }
        files["metrics"].write_text(json.dumps(summary, indent=2) + "\n")
        save_checkpoint(files["checkpoint"], result, data)
        gradcam_grid({config.loss: result.examples}, result.classes, files["figure"])
        result.files = {k: str(v) for k, v in files.items()}
    return result
