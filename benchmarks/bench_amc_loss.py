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

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, Variant, embedding_bench, gram_work

CLASSES = 10  # CIFAR-10, as in the AMC paper


def all_pairs(draw: Draw, n: int, d: int) -> Inputs:
    features, labels = draw.normal(n, d), draw.integers(0, CLASSES, n)
    return Inputs((features, labels), {"margin": 0.5, "pairs": "all"}, grads=(0,))


def work(variant: str, n: int, d: int, s: int, mode: str) -> tuple[float, float]:
    return gram_work(n, d, n * d * s + 8 * n, 2 * n * d * s + 8 * n, mode)


BENCH = embedding_bench("amc_loss", (Variant("all-pairs", all_pairs),), work)

if __name__ == "__main__":
    sys.exit(main(BENCH))
