"""Benchmark of angular_distance: θ = arccos(clamp(x̂·x̂ᵀ)) of N embeddings of size D (y = x).

Analytic work per call (s: bytes per element of the dtype):
  forward            2·N²·D FLOPs (the Gram GEMM);         N·D·s read, N²·s written
  backward           4·N²·D FLOPs (two gradient GEMMs);    N²·s + N·D·s read, N·D·s written
  forward+backward   the sum of both
The normalisation and the clamp/arccos epilogue are O(N·D + N²) and not counted.
No peer: libraries give cosine similarities, not the clamped angles.
"""

from __future__ import annotations

import sys

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, Variant, embedding_bench, gram_work


def self_distance(draw: Draw, n: int, d: int) -> Inputs:
    return Inputs((draw.normal(n, d),), grads=(0,))


def work(variant: str, n: int, d: int, s: int, mode: str) -> tuple[float, float]:
    return gram_work(n, d, n * d * s + n * n * s, n * n * s + 2 * n * d * s, mode)


BENCH = embedding_bench("angular_distance", (Variant("self", self_distance),), work)

if __name__ == "__main__":
    sys.exit(main(BENCH))
