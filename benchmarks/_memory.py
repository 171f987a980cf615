"""Peak memory of one call (docs/design.md#6-benchmarks): on CUDA the caching allocator's peak; on
CPU the peak resident set (Linux ``VmHWM``), after returning the freed heap to the OS
(``malloc_trim``) and resetting the high-water mark (``/proc/self/clear_refs``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MB = 2**20


def _status_bytes(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {name}")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).malloc_trim
    return None


def _reset_cpu_peak() -> bool:
    """Return freed heap memory to the OS, then reset this process's peak RSS to its RSS."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb(step: Callable[[], Any], device: torch.device) -> tuple[float, float] | None:
    """(peak, peak above the state before the call) of one call, in MB; None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        if not _reset_cpu_peak():
            return None
        base = _status_bytes("VmRSS")
        result = step()
        peak = _status_bytes("VmHWM")
    del result
    return peak / MB, max(peak - base, 0) / MB
