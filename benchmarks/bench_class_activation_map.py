"""Benchmark of class_activation_map: B maps of K channels at 7×7, a 1000-class linear head.

Analytic work per call (P = 49 map pixels, C = 1000 classes, s bytes per element):
  forward    2·B·K·P FLOPs;  B·K·P·s + B·K·s (the targets' weight rows) + 8·B read, B·P·s written
  backward   3·B·K·P FLOPs;  B·K·P·s + B·P·s + B·K·s read, B·K·P·s + C·K·s written (the
             gradients of the activations and of the whole weight)
No peer: captum has no class activation map of a linear head; this op replaces CGC's double
backward through Grad-CAM.
"""

from __future__ import annotations

import sys

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Sweep, Variant, by_mode

SIDE = 7
CLASSES = 1000


def linear_head(draw: Draw, b: int, k: int) -> Inputs:
    activations, weight = draw.normal(b, k, SIDE, SIDE), draw.normal(CLASSES, k)
    return Inputs((activations, weight, draw.integers(0, CLASSES, b)), grads=(0, 1))


def work(variant: str, b: int, k: int, s: int, mode: str) -> tuple[float, float]:
    channels, pixels = b * k * SIDE * SIDE, b * SIDE * SIDE
    forward = 2.0 * channels, float(channels * s + b * k * s + 8 * b + pixels * s)
    backward = 3.0 * channels, float(2 * channels * s + pixels * s + b * k * s + CLASSES * k * s)
    return by_mode(forward, backward, mode)


BENCH = OpBench(
    op="class_activation_map",
    n_name="B",
    d_name="K",
    variants=(Variant("linear-head", linear_head),),
    work=work,
    quick=Sweep((32, 128), (512,)),
    cpu=Sweep((32, 64, 128, 256), (512, 2048), compile_dims=(512,)),
    cuda=Sweep((32, 128, 512, 2048), (512, 2048), ("bfloat16", "float32")),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
