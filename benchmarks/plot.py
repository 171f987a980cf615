"""Plots of benchmark results: time and peak memory against the swept size, one PNG each per op.

    python benchmarks/plot.py benchmarks/results/<device>.csv [--out DIR]

Reads nothing but the CSV, keeping the newest successful row of each measurement, and writes
``<op>-time.png`` (median ms, with the p20–p80 band) and ``<op>-memory.png`` (peak MB above the
inputs) into DIR, by default a folder named after the CSV beside it. Each figure has a row of
panels per mode and a column per (variant, dim, dtype); one line per provider, log-log axes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

#: The columns that identify a measurement (the same as _results.KEY; this file imports no torch).
KEY = ("device", "op", "variant", "mode", "dtype", "n", "d", "provider")
MODES = ("forward", "backward", "forward+backward")
STYLES = {
    "reference": {"color": "black"},
    "reference+compile": {"color": "0.5", "linestyle": "--"},
    "cpp": {"color": "tab:blue"},
    "cuda": {"color": "tab:green"},
    "triton": {"color": "tab:red"},
}
PEER_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
MEMORY_FLOOR_MB = 0.01  # log axes: a peak that rounds to zero is drawn at this floor


def newest_rows(path: Path) -> list[dict[str, str]]:
    """The last successful row of every measurement key, in file order."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    newest = {tuple(row[k] for k in KEY): row for row in rows if row["status"] == "ok"}
    return list(newest.values())


def _style(provider: str, peers: list[str]) -> dict[str, object]:
    if provider in STYLES:
        return STYLES[provider]
    if provider not in peers:
        peers.append(provider)
    return {"color": PEER_COLORS[peers.index(provider) % len(PEER_COLORS)], "linestyle": ":"}


def _panels(rows: list[dict[str, str]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    columns = sorted(
        {(r["variant"], r["d"], r["dtype"]) for r in rows}, key=lambda c: (c[0], int(c[1]), c[2])
    )
    return modes, columns


def draw(rows: list[dict[str, str]], memory: bool, path: Path) -> None:
    """One figure of an op's rows: time (memory=False) or peak memory above the inputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes, columns = _panels(rows)
    figure, axes = plt.subplots(
        len(modes), len(columns), figsize=(4.2 * len(columns), 3.2 * len(modes)), squeeze=False
    )
    devices = sorted({r["device"] for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    peers: list[str] = []
    for i, mode in enumerate(modes):
        for j, (variant, d, dtype) in enumerate(columns):
            axis = axes[i][j]
            for device in devices:
                for provider in providers:
                    points = sorted(
                        (int(r["n"]), r)
                        for r in rows
                        if (r["mode"], r["variant"], r["d"], r["dtype"])
                        == (mode, variant, d, dtype)
                        and (r["provider"], r["device"]) == (provider, device)
                    )
                    if not points:
                        continue
                    sizes = [n for n, _ in points]
                    label = provider if len(devices) == 1 else f"{provider} ({device})"
                    style = _style(provider, peers)
                    if memory:
                        values = [
                            max(float(r["peak_above_inputs_mb"] or 0), MEMORY_FLOOR_MB)
                            for _, r in points
                        ]
                    else:
                        values = [float(r["median_ms"]) for _, r in points]
                        low = [float(r["p20_ms"]) for _, r in points]
                        high = [float(r["p80_ms"]) for _, r in points]
                        axis.fill_between(sizes, low, high, alpha=0.15, color=style["color"])
                    axis.plot(sizes, values, marker="o", markersize=3, label=label, **style)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            sizes_here = sorted({int(r["n"]) for r in rows})
            axis.set_xticks(sizes_here, [str(n) for n in sizes_here])
            axis.minorticks_off()
            axis.set_title(f"{mode} · {variant} · {rows[0]['d_name']}={d} · {dtype}", fontsize=8)
            axis.set_xlabel(rows[0]["n_name"], fontsize=8)
            axis.set_ylabel("peak MB above inputs" if memory else "median ms", fontsize=8)
            axis.tick_params(labelsize=7)
            axis.grid(True, which="both", alpha=0.3)
    handles, labels = [], []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    op = rows[0]["op"]
    what = "peak memory above the inputs" if memory else "time (median, p20–p80 band)"
    figure.suptitle(f"{op}: {what} on {', '.join(devices)}", fontsize=10)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot(csv_path: Path, out: Path) -> list[Path]:
    """Write <op>-time.png and <op>-memory.png for every op in the CSV; return their paths."""
    rows = newest_rows(csv_path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for op in sorted({r["op"] for r in rows}):
        op_rows = [r for r in rows if r["op"] == op]
        for memory, name in ((False, "time"), (True, "memory")):
            path = out / f"{op}-{name}.png"
            draw(op_rows, memory, path)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="plot.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, help="a results CSV written by the benchmarks")
    parser.add_argument("--out", type=Path, help="output folder (default: <csv without .csv>/)")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 1
    if not args.csv.is_file():
        print(f"plot.py: no such CSV: {args.csv}", file=sys.stderr)
        return 1
    written = plot(args.csv, args.out or args.csv.with_suffix(""))
    if not written:
        print(f"plot.py: {args.csv} has no successful rows", file=sys.stderr)
        return 1
    print("\n".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
