"""The device's roofline (docs/design.md#6-benchmarks), measured once per run: the square matmul
rate per dtype and the bandwidth of a large copy, against which each row's analytic FLOPs and bytes
are set."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._harness import DTYPES
from ._timing import quantiles, synchronize, time_samples_ms


@dataclass(frozen=True)
class Roofline:
    matmul_tflops: dict[str, float]  # per dtype name
    copy_gbps: float


def _matmul_size(device: torch.device, dtype: torch.dtype, largest: int) -> int:
    """The side, doubling from 256, at which one matmul takes 20 ms (or `largest`)."""
    size = 256
    while size < largest:
        a = torch.randn(size, size, device=device, dtype=dtype)
        a @ a  # first call: library initialisation
        synchronize(device)
        began = time.perf_counter()
        a @ a
        synchronize(device)
        if time.perf_counter() - began > 0.02:
            break
        size *= 2
    return size


def measure_roofline(device: torch.device, dtypes: Sequence[str], min_time: float) -> Roofline:
    """Square matmul rates (up to 8192² on CUDA, 2048² on CPU) and a large copy's bandwidth."""
    rates = {}
    for name in dtypes:
        size = _matmul_size(device, DTYPES[name], 8192 if device.type == "cuda" else 2048)
        a = torch.randn(size, size, device=device, dtype=DTYPES[name])
        b = torch.randn(size, size, device=device, dtype=DTYPES[name])
        median = quantiles(time_samples_ms(lambda a=a, b=b: a @ b, device, min_time))[0]
        rates[name] = 2 * size**3 / (median * 1e-3) / 1e12
        del a, b
    numel = 2**28 if device.type == "cuda" else 2**25
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    median = quantiles(time_samples_ms(lambda: target.copy_(source), device, min_time))[0]
    return Roofline(rates, 2 * numel * source.element_size() / (median * 1e-3) / 1e9)
