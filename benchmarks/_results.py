"""Benchmark results: provenance, the CSV file of a device, and the printed table.

Every row is one (op, variant, size, dtype, mode, provider) measurement with the provenance of
its run (device, versions, git sha, timestamp). Rows are appended to ``<device-slug>.csv``, so
one file accumulates the runs of a device; ``plot.py`` reads the newest row of each key.
"""

from __future__ import annotations

import csv
import datetime
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

import amc_kernels
from amc_kernels.cli import print_table, triton_version

PROVENANCE = (
    "timestamp",
    "git_sha",
    "amc_kernels",
    "torch",
    "triton",
    "cuda",
    "python",
    "device",
    "threads",
)
MEASUREMENT = (
    "op",
    "variant",
    "mode",
    "dtype",
    "n_name",
    "n",
    "d_name",
    "d",
    "shapes",
    "provider",
    "status",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "samples",
    "peak_mb",
    "peak_above_inputs_mb",
    "flops",
    "bytes",
    "tflops",
    "gbps",
    "matmul_peak_tflops",
    "copy_peak_gbps",
    "frac_matmul_peak",
    "frac_copy_peak",
    "note",
)
COLUMNS = PROVENANCE + MEASUREMENT
#: The columns that identify a measurement; plot.py keeps the newest row of each key.
KEY = ("device", "op", "variant", "mode", "dtype", "n", "d", "provider")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_slug(device: torch.device) -> str:
    """The CSV's file stem: ``cpu-<model>`` or the GPU's name, lower case, dashes."""
    name = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if device.type == "cuda" else f"cpu-{slug}"


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def git_sha() -> str:
    """HEAD of the checkout these benchmarks run from (``-dirty`` when edited), else unknown."""
    try:
        top = Path(_git("rev-parse", "--show-toplevel"))
        if (top / "benchmarks" / "_results.py").resolve() != Path(__file__).resolve():
            return "unknown"  # an installed copy that merely sits inside some other repository
        sha = _git("rev-parse", "--short=12", "HEAD")
        return sha + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device) -> dict[str, str]:
    threads = torch.get_num_threads() if device.type == "cpu" else ""
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "amc_kernels": amc_kernels.__version__,
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "device": device_name(device),
        "threads": str(threads),
    }


def csv_path(target: str, device: torch.device) -> Path:
    """`target` itself, or ``<target>/<device-slug>.csv`` when it is a folder (or ends in /)."""
    path = Path(target)
    if target.endswith(("/", "\\")) or path.is_dir():
        return path / f"{device_slug(device)}.csv"
    return path


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def append_rows(path: Path, rows: Iterable[dict[str, object]]) -> None:
    """Append rows to `path`, writing the header first when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if tuple(header) != COLUMNS:
            raise ValueError(
                f"{path} has other columns than this harness writes; move it aside or pass "
                f"another --csv"
            )
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in COLUMNS})


def format_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _speedup(row: dict[str, object], reference: dict[tuple, float]) -> str:
    base = reference.get(_group(row))
    if base is None or row["status"] != "ok":
        return ""
    return f"{base / float(row['median_ms']):.2f}x"  # type: ignore[arg-type]


def _group(row: dict[str, object]) -> tuple:
    return tuple(row[k] for k in KEY if k != "provider")


def print_results(rows: Sequence[dict[str, object]]) -> None:
    """One line per measurement: time, speedup over the reference, peak memory above the inputs."""
    reference = {
        _group(row): float(row["median_ms"])  # type: ignore[arg-type]
        for row in rows
        if row["provider"] == "reference" and row["status"] == "ok"
    }
    ops = list(dict.fromkeys(row["op"] for row in rows))
    table = []
    for row in sorted(rows, key=lambda row: ops.index(row["op"])):
        ok = row["status"] == "ok"
        above = row.get("peak_above_inputs_mb")
        table.append(
            [
                str(row["op"]),
                str(row["variant"]),
                f"{row['n_name']}={row['n']}",
                f"{row['d_name']}={row['d']}",
                str(row["dtype"]),
                str(row["mode"]),
                str(row["provider"]),
                format_ms(float(row["median_ms"])) if ok else str(row["status"]),  # type: ignore[arg-type]
                _speedup(row, reference),
                f"{above:.1f}" if ok and isinstance(above, float) else "",
            ]
        )
    header = ["op", "variant", "size", "dim", "dtype", "mode", "provider", "median ms"]
    print_table([*header, "vs reference", "peak MB"], table)
