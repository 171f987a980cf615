"""Per-call times of one step (docs/design.md#6-benchmarks): ``torch.utils.benchmark`` blocks on CPU
and ``triton.testing.do_bench`` runs on CUDA, summarised as their median, p20 and p80."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils.benchmark as torch_benchmark

MIN_SAMPLES = 5


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantiles(samples_ms: Sequence[float]) -> tuple[float, float, float]:
    """(median, p20, p80), interpolating between the sorted samples."""
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0], samples_ms[0]
    deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
    return statistics.median(samples_ms), deciles[1], deciles[7]


def time_samples_ms(step: Callable[[], Any], device: torch.device, min_time: float) -> list[float]:
    """Per-call times in ms: do_bench runs on CUDA, torch.utils.benchmark blocks on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        rep = max(1.0, 1000 * min_time)
        return list(do_bench(step, warmup=rep / 4, rep=rep, return_mode="all"))
    timer = torch_benchmark.Timer(
        stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
    )
    measurement = timer.blocked_autorange(min_run_time=min_time)
    times = list(measurement.times)
    deadline = time.perf_counter() + 4 * min_time
    while len(times) < MIN_SAMPLES and time.perf_counter() < deadline:
        times += timer.timeit(measurement.number_per_run).times
    return [1e3 * t for t in times]
