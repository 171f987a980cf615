"""Benchmark of supcon_loss on two views: SupCon (100 classes) and SimCLR (labels=None).

N samples, V = 2 views, D features; A = V·N anchors ("all") and C = V·N contrast rows.
Analytic work per call (s: bytes per element of the dtype; labels are int64):
  forward            2·A·C·D FLOPs (the logit GEMM);       V·N·D·s + 8·N read
  backward           4·A·C·D FLOPs (two gradient GEMMs);   V·N·D·s + 8·N read, V·N·D·s written
  forward+backward   the sum of both
The counts are those of dense GEMMs; kernels that compute only the upper-triangle tiles of a
symmetric similarity (contrast_mode "all") and recompute the logits in the backward do
1·A·C·D + 3·A·C·D FLOPs, so their fraction of the matmul peak can exceed 1: the floor of such
a kernel is 4·A·C·D / the matmul rate for forward+backward.
The log-sum-exp epilogue is O(A·C) and not counted; SimCLR reads no labels.
Peers, on the same normalised embeddings and temperature (base_temperature = temperature, so the
scales agree): pytorch-metric-learning's SupConLoss for SupCon and NTXentLoss for SimCLR. They
take one [V·N, D] matrix (views stacked view-major) with the labels (or sample ids) repeated per
view, and materialise the A×C similarity and mask matrices.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, Peer, Variant, embedding_bench, gram_work

VIEWS = 2
CLASSES = 100  # CIFAR-100, as in SupCon and ExCon
TEMPERATURE = 0.1
OPTIONS = {"temperature": TEMPERATURE, "base_temperature": TEMPERATURE}


def supervised(draw: Draw, n: int, d: int) -> Inputs:
    features, labels = draw.normal(n, VIEWS, d), draw.integers(0, CLASSES, n)
    return Inputs((features, labels), OPTIONS, grads=(0,))


def simclr(draw: Draw, n: int, d: int) -> Inputs:
    return Inputs((draw.normal(n, VIEWS, d), None), OPTIONS, grads=(0,))


def pml_loss(name: str) -> Callable[[Inputs], Callable[[], Any]]:
    """A pytorch-metric-learning loss on the view-major stack, labels repeated per view."""

    def build(inputs: Inputs) -> Callable[[], Any]:
        from pytorch_metric_learning import losses

        features, labels = inputs.args
        n, views, d = features.shape
        groups = torch.arange(n, device=features.device) if labels is None else labels
        repeated = groups.repeat(views)
        loss = getattr(losses, name)(temperature=inputs.kwargs["temperature"])
        return lambda: loss(features.transpose(0, 1).reshape(views * n, d), repeated)

    return build


def work(variant: str, n: int, d: int, s: int, mode: str) -> tuple[float, float]:
    rows = VIEWS * n
    labels = 8 * n if variant == "supcon" else 0
    return gram_work(rows, d, rows * d * s + labels, 2 * rows * d * s + labels, mode)


PACKAGE = "pytorch_metric_learning"
BENCH = embedding_bench(
    "supcon_loss",
    (
        Variant("supcon", supervised, (Peer("pml-SupConLoss", PACKAGE, pml_loss("SupConLoss")),)),
        Variant("simclr", simclr, (Peer("pml-NTXentLoss", PACKAGE, pml_loss("NTXentLoss")),)),
    ),
    work,
    quick_sizes=(128, 512),
    cpu_sizes=(256, 512, 1024, 2048),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
