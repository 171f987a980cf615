"""Benchmark of cgc_loss: B pairs of h×h ReLU'd maps in a 224×224 frame, random crops and flips.

Analytic work per call, counted for the fused algorithm of docs/design.md#26-cgc_loss (the per-axis
resampling matrices; no 224×224 map), with s bytes per element:
  forward    2·B²·h² (the B×B Gram of the maps under the resampling metric) + 8·B·h³ (each
             map's two per-axis quadratic forms, for the crop and for the frame) FLOPs;
             2·B·h²·s + 33·B read (maps, int64 crops, bool flips)
  backward   twice the forward FLOPs; 2·B·h²·s + 33·B read, 2·B·h²·s written
The literal reference resamples every map to 224×224, so it does far more work than counted.
No peer: CGC's official code is what the reference reproduces.
"""

from __future__ import annotations

import sys

import torch

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Sweep, Variant, by_mode

FRAME = 224


def crops_and_flips(draw: Draw, b: int, h: int) -> Inputs:
    """RandomResizedCrop-like boxes (sides from a quarter of the frame up) and coin-flip flips."""
    sides = draw.integers(FRAME // 4, FRAME + 1, b, 2)
    corners = draw.integers(0, 2**20, b, 2) % (FRAME - sides + 1)
    crops = torch.cat([corners, sides], dim=1)
    flips = draw.integers(0, 2, b).bool()
    orig, aug = draw.uniform(b, h, h), draw.uniform(b, h, h)
    return Inputs((orig, aug, crops, flips), {"temperature": 0.5, "size": FRAME}, grads=(0, 1))


def work(variant: str, b: int, h: int, s: int, mode: str) -> tuple[float, float]:
    flops = 2.0 * b * b * h * h + 8.0 * b * h**3
    read = 2 * b * h * h * s + 33 * b
    return by_mode((flops, float(read)), (2 * flops, float(read + 2 * b * h * h * s)), mode)


BENCH = OpBench(
    op="cgc_loss",
    n_name="B",
    d_name="h",
    variants=(Variant("random-crops", crops_and_flips),),
    work=work,
    quick=Sweep((16, 32), (7,)),
    cpu=Sweep((16, 32, 64), (7,)),
    cuda=Sweep((32, 128, 512), (7, 14), ("bfloat16", "float32")),
    no_compile="the reference loops over the batch in Python (crops.tolist()), which "
    "torch.compile unrolls into minutes of compilation",
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
