"""Benchmark of amc_loss with pairs="all": every pair i<j of N embeddings of size D, 10 classes.

Analytic work per call (s: bytes per element of the dtype; labels are int64):
  forward            2·N²·D FLOPs (the Gram GEMM);         N·D·s + 8·N read
  backward           4·N²·D FLOPs (two gradient GEMMs);    N·D·s + 8·N read, N·D·s written
  forward+backward   the sum of both
The counts are those of dense GEMMs; a kernel that computes only the upper-triangle tiles
(every pair once) and recomputes the Gram in the backward does N²·D + 3·N²·D FLOPs, so its
fraction of the matmul peak can exceed 1: its floor is 4·N²·D / the matmul rate.
The pair terms and the arccos are O(N²) and not counted. pairs="halves" is O(N·D) and is not
swept. No peer: no other library implements the AMC loss.
"""

from __future__ import annotations

import sys

from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Sweep, Variant, by_mode, main

CLASSES = 10  # CIFAR-10, as in the AMC paper


def all_pairs(draw: Draw, n: int, d: int) -> Inputs:
    features, labels = draw.normal(n, d), draw.integers(0, CLASSES, n)
    return Inputs((features, labels), {"margin": 0.5, "pairs": "all"}, grads=(0,))


def work(variant: str, n: int, d: int, s: int, mode: str) -> tuple[float, float]:
    forward = 2.0 * n * n * d, float(n * d * s + 8 * n)
    backward = 4.0 * n * n * d, float(2 * n * d * s + 8 * n)
    return by_mode(forward, backward, mode)


BENCH = OpBench(
    op="amc_loss",
    n_name="N",
    d_name="D",
    variants=(Variant("all-pairs", all_pairs),),
    work=work,
    quick=Sweep((256, 1024), (128,)),
    cpu=Sweep((256, 512, 1024, 2048, 4096), (128, 512), compile_dims=(128,)),
    cuda=Sweep((256, 1024, 4096, 16384, 32768, 65536), (128, 512), ("bfloat16", "float32")),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
