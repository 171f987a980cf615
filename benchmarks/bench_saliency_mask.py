"""Benchmark of saliency_mask: B RGB images of side H masked by 7×7 saliency maps (forward only).

Variants: threshold (e > 0.5) and top15 (the 15% most salient pixels, ExCon's Average Drop).
Analytic work per call (C = 3 channels, s bytes per element):
  forward    14·B·H² FLOPs (8 bilinear, 3 normalisation, 3 per-channel selects per pixel; the
             top15 sort is not counted); B·C·H²·s + 49·B·s read, B·C·H²·s + B·H² (bool mask)
             written
No peer: ExCon's masking is a few lines of PyTorch, which the reference reproduces.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Sweep, Variant

CHANNELS, SIDE = 3, 7


def masked(options: dict[str, Any]) -> Callable[[Draw, int, int], Inputs]:
    def inputs(draw: Draw, b: int, height: int) -> Inputs:
        images, saliency = draw.normal(b, CHANNELS, height, height), draw.uniform(b, SIDE, SIDE)
        return Inputs((images, saliency), options)

    return inputs


def work(variant: str, b: int, height: int, s: int, mode: str) -> tuple[float, float]:
    pixels = b * height * height
    return 14.0 * pixels, float(2 * CHANNELS * pixels * s + 49 * b * s + pixels)


BENCH = OpBench(
    op="saliency_mask",
    n_name="B",
    d_name="H",
    variants=(
        Variant("threshold", masked({"threshold": 0.5})),
        Variant("top15", masked({"top_fraction": 0.15})),
    ),
    work=work,
    quick=Sweep((32, 128), (224,)),
    cpu=Sweep((32, 64, 128, 256), (224,)),
    cuda=Sweep((32, 128, 512, 2048), (224,), ("bfloat16", "float32")),
    modes=("forward",),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
