"""PNG figures with matplotlib's Agg canvas (no display, no global backend change)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluation import Examples


def gradcam_grid(rows: dict[str, Examples], classes: list[str], path: str | Path) -> None:
    """One column per test image; the first row shows the images (object masks outlined), each
    further row one recipe's Grad-CAM overlay, titled with its prediction (green: correct)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("figures need matplotlib: pip install 'amc-kernels[train]'") from error
    first = next(iter(rows.values()))
    columns = len(first.labels)
    fig = Figure(figsize=(1.3 * columns + 0.9, 1.45 * (len(rows) + 1)), dpi=110)
    grid = fig.subplots(len(rows) + 1, columns, squeeze=False)
    images = first.images.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    for col in range(columns):
        ax = grid[0, col]
        ax.imshow(images[col], interpolation="nearest")
        if first.masks is not None:
            ax.contour(
                first.masks[col].float().numpy(), levels=[0.5], colors="white", linewidths=0.8
            )
        ax.set_title(classes[int(first.labels[col])], fontsize=8)
    grid[0, 0].set_ylabel("image", fontsize=9)
    for row, (name, ex) in enumerate(rows.items(), start=1):
        for col in range(columns):
            ax = grid[row, col]
            ax.imshow(images[col], interpolation="nearest")
            ax.imshow(
                ex.maps[col].numpy(),
                cmap="jet",
                alpha=0.5,
                vmin=0,
                vmax=1,
                interpolation="bilinear",
            )
            correct = int(ex.predictions[col]) == int(ex.labels[col])
            ax.set_title(
                classes[int(ex.predictions[col])], fontsize=8, color="green" if correct else "red"
            )
        grid[row, 0].set_ylabel(name, fontsize=9)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Grad-CAM of the true class (title: prediction)", fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
