"""Several recipes on the same data and seed: a side-by-side table and one Grad-CAM figure."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

from .config import TrainConfig
from .data import load_data
from .figures import gradcam_grid
from .train import Log, RunResult, train

#: (metric key, column title, scale, decimals); ↑ higher is better, ↓ lower is better.
COLUMNS = (
    ("accuracy", "accuracy % ↑", 100, 1),
    ("ece", "ECE % ↓", 100, 1),
    ("content_heatmap", "content heatmap % ↑", 100, 1),
    ("pointing_game", "pointing game % ↑", 100, 1),
    ("insertion_auc", "insertion AUC ↑", 1, 3),
    ("deletion_auc", "deletion AUC ↓", 1, 3),
    ("average_drop", "average drop % ↓", 100, 1),
    ("increase_rate", "increase % ↑", 100, 1),
    ("train_seconds", "train s", 1, 0),
)


def table(results: dict[str, RunResult]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the metrics every run has."""
    present = [c for c in COLUMNS if all(c[0] in r.metrics for r in results.values())]
    header = ["loss", *(title for _, title, _, _ in present)]
    rows = [
        [name, *(f"{r.metrics[key] * scale:.{digits}f}" for key, _, scale, digits in present)]
        for name, r in results.items()
    ]
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    )


def compare(
    config: TrainConfig, losses: list[str], *, log: Log = print
) -> tuple[dict[str, RunResult], str]:
    """Train each recipe with ``config`` (only the loss changes), print and save the table
    (comparison.md/.csv/.json) and the figure (comparison.png) under ``config.out``, with each
    run's own outputs in ``<out>/<loss>/``. Returns the runs and the Markdown report."""
    start = time.perf_counter()
    base = config.resolved()
    data = load_data(base)
    out = Path(base.out)
    results: dict[str, RunResult] = {}
    for loss in losses:
        run = dataclasses.replace(config, loss=loss, out=str(out / loss))
        results[loss] = train(run, data, log=log)
    header, rows = table(results)
    notes = [
        f"{data.describe()}, {base.image_size}×{base.image_size} px, seed {base.seed}; "
        f"{base.model}, {base.epochs} epochs, batch {base.batch_size}, "
        f"{base.optimizer} lr {base.lr}.",
        f"Accuracy and ECE on all {len(data.test)} test images; explanation metrics on the "
        f"first {min(base.metric_images, len(data.test))}, from Grad-CAM at the last "
        "convolutional map (content heatmap, pointing game, insertion and deletion: the true "
        "class; average drop and increase: the predicted class).",
    ]
    if data.test.masks is not None:
        area = data.test.masks[: base.metric_images].float().mean().item()
        notes.append(
            f"A uniform map would score a content heatmap of {100 * area:.1f} % "
            "(the mean object area)."
        )
    notes.append(f"Total wall time {time.perf_counter() - start:.0f} s.")
    report = markdown(header, rows) + "\n\n" + "\n".join(notes) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(report)
    with (out / "comparison.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    summary = {name: r.metrics for name, r in results.items()}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    gradcam_grid(
        {name: r.examples for name, r in results.items()},
        data.classes,
        out / "comparison.png",
    )
    log("\n" + report + f"\nwrote {out / 'comparison.md'}, .csv, .json and .png")
    return results, report
