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

from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Sweep, Variant, by_mode, main


def self_distance(draw: Draw, n: int, d: int) -> Inputs:
    return Inputs((draw.normal(n, d),), grads=(0,))


def work(variant: str, n: int, d: int, s: int, mode: str) -> tuple[float, float]:
    forward = 2.0 * n * n * d, float(n * d * s + n * n * s)
    backward = 4.0 * n * n * d, float(n * n * s + 2 * n * d * s)
    return by_mode(forward, backward, mode)


BENCH = OpBench(
    op="angular_distance",
    n_name="N",
    d_name="D",
    variants=(Variant("self", self_distance),),
    work=work,
    quick=Sweep((256, 1024), (128,)),
    cpu=Sweep((256, 512, 1024, 2048, 4096), (128, 512), compile_dims=(128,)),
    cuda=Sweep((256, 1024, 4096, 16384, 32768, 65536), (128, 512), ("bfloat16", "float32")),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
