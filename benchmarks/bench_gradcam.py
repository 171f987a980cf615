"""Benchmark of gradcam on B maps of K channels at 7×7 (a ResNet's last stage at 224×224) or 14×14.

Variants:
  mean-224     Grad-CAM weights, no ReLU, bilinear to 224×224, min-max normalised (ExCon's use
               of captum); peer: captum's LayerGradCam, upsampled and normalised the same way
  elementwise  Σ_k G_k ⊙ A_k with ReLU at the layer's resolution (CGC's code); no peer
  mean-14      the defaults (Grad-CAM weights, ReLU, no resize, no normalisation) on 14×14 maps
               (a ResNet's third stage at 224×224); no peer
Analytic work per call, with P map pixels (49, or 196 for mean-14), O output pixels (224² or P),
s bytes per element:
  forward    mean-224: 3·B·K·P + 11·B·O FLOPs; mean-14: 3·B·K·P + B·O FLOPs;
             elementwise: 2·B·K·P + B·O FLOPs; 2·B·K·P·s read (A and G), B·O·s written
  backward   mean-224: 4·B·K·P + 11·B·O FLOPs; mean-14: 4·B·K·P + B·O FLOPs;
             elementwise: 2·B·K·P + B·O FLOPs; B·K·P·s (mean) or 2·B·K·P·s (elementwise) +
             B·O·s read; written: the gradient of A, B·K·P·s, and that of G, B·K·P·s for
             elementwise but B·K·s for mean (one value per channel, which an expanded tensor
             carries; the reference writes it at every pixel)
11 FLOPs per output pixel count the bilinear taps (8) and the normalisation (3).
captum derives G by back-propagating through a probe head whose gradient at the layer is
exactly G (score_b = Σ A_b ⊙ G_b), so its time includes that product and one reduction, as with
any model; its maps carry no gradient to G, so it has forward rows only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from amc_kernels.benchmarks._cli import main
from amc_kernels.benchmarks._harness import Draw, Inputs, OpBench, Peer, Sweep, Variant, by_mode

SIDES = {"mean-224": 7, "elementwise": 7, "mean-14": 14}
OUTPUT = (224, 224)
EXCON = {"weighting": "mean", "relu": False, "normalize": "minmax", "output_size": OUTPUT}
CGC = {"weighting": "elementwise", "relu": True}
DEFAULTS: dict[str, Any] = {}


def maps(options: dict[str, Any], side: int) -> Callable[[Draw, int, int], Inputs]:
    def inputs(draw: Draw, b: int, k: int) -> Inputs:
        activations, gradients = draw.normal(b, k, side, side), draw.normal(b, k, side, side)
        return Inputs((activations, gradients), options, grads=(0, 1))

    return inputs


class Probe(torch.nn.Module):
    """A head whose score's gradient at `layer` is exactly `gradients`: Σ A_b ⊙ G_b."""

    def __init__(self, gradients: torch.Tensor) -> None:
        super().__init__()
        self.layer = torch.nn.Identity()
        self.gradients = gradients

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return (self.layer(activations) * self.gradients).flatten(1).sum(1, keepdim=True)


def captum_gradcam(inputs: Inputs) -> Callable[[], torch.Tensor]:
    """captum's LayerGradCam, then the bilinear upsampling and the min-max of ExCon."""
    from captum.attr import LayerAttribution, LayerGradCam

    activations, gradients = inputs.args
    probe = Probe(gradients)
    explainer = LayerGradCam(probe, probe.layer)

    def forward() -> torch.Tensor:
        cams = explainer.attribute(activations, target=0, relu_attributions=False)
        cams = LayerAttribution.interpolate(cams, OUTPUT, "bilinear")[:, 0]
        shifted = cams - cams.amin(dim=(1, 2), keepdim=True)
        return shifted / (shifted.amax(dim=(1, 2), keepdim=True) + 1e-8)

    return forward


def work(variant: str, b: int, k: int, s: int, mode: str) -> tuple[float, float]:
    pixels = SIDES[variant] ** 2
    channels = b * k * pixels
    if variant == "mean-224":
        out = b * OUTPUT[0] * OUTPUT[1]
        forward_flops, backward_flops = 3.0 * channels + 11 * out, 4.0 * channels + 11 * out
    elif variant == "mean-14":
        out = b * pixels
        forward_flops, backward_flops = 3.0 * channels + out, 4.0 * channels + out
    else:
        out = b * pixels
        forward_flops = backward_flops = 2.0 * channels + out
    forward = forward_flops, float(2 * channels * s + out * s)
    if variant == "elementwise":
        backward = backward_flops, float(4 * channels * s + out * s)
    else:
        backward = backward_flops, float(2 * channels * s + b * k * s + out * s)
    return by_mode(forward, backward, mode)


BENCH = OpBench(
    op="gradcam",
    n_name="B",
    d_name="K",
    variants=(
        Variant(
            "mean-224",
            maps(EXCON, SIDES["mean-224"]),
            (Peer("captum-LayerGradCam", "captum", captum_gradcam, differentiable=False),),
        ),
        Variant("elementwise", maps(CGC, SIDES["elementwise"])),
        Variant("mean-14", maps(DEFAULTS, SIDES["mean-14"])),
    ),
    work=work,
    quick=Sweep((32, 128), (512,)),
    cpu=Sweep((32, 64, 128, 256), (512,)),
    cuda=Sweep((32, 128, 512, 2048), (512, 2048), ("bfloat16", "float32")),
)

if __name__ == "__main__":
    sys.exit(main(BENCH))
