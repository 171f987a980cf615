"""torch.ops.amc_kernels.gradcam_fwd/_bwd: fake kernels, autograd and the cpp/cuda backends."""

from __future__ import annotations

from typing import Any

import torch

from ._common import forbid_double_backward, register_compiled

OP = "gradcam"


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    *,
    weighting: str = "mean",
    relu: bool = True,
    normalize: str | None = None,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The reference's signature on the compiled kernel (normalize None is "none")."""
    maps, _, _ = torch.ops.amc_kernels.gradcam_fwd(
        activations, gradients, weighting, relu, normalize or "none", list(output_size or ())
    )
    return maps


@torch.library.register_fake("amc_kernels::gradcam_fwd")
def _(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, height, width = activations.shape
    out_height, out_width = output_size if output_size else (height, width)
    acc = torch.float64 if activations.dtype == torch.float64 else torch.float32
    maps = activations.new_empty((batch, out_height, out_width))
    raw = activations.new_empty((batch, height, width), dtype=acc)
    alpha = activations.new_empty((batch, channels if weighting == "mean" else 0), dtype=acc)
    return maps, raw, alpha


@torch.library.register_fake("amc_kernels::gradcam_bwd")
def _(
    grad: torch.Tensor,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    raw: torch.Tensor,
    alpha: torch.Tensor,
    weighting: str,
    relu: bool,
    normalize: str,
    output_size: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    per_channel = (*gradients.shape[:2], 1, 1)
    grad_gradients = gradients.new_empty(per_channel if weighting == "mean" else gradients.shape)
    return activations.new_empty(activations.shape), grad_gradients


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    activations, gradients, *options = inputs
    _, raw, alpha = output
    ctx.mark_non_differentiable(raw, alpha)
    ctx.save_for_backward(activations, gradients, raw, alpha)
    ctx.options = options


def _backward(ctx: Any, grad: torch.Tensor, _grad_raw: Any, _grad_alpha: Any) -> tuple:
    gradients = ctx.saved_tensors[1]
    grad_activations, grad_gradients = torch.ops.amc_kernels.gradcam_bwd(
        grad, *ctx.saved_tensors, *ctx.options
    )
    # "mean": one value per channel ([B, K, 1, 1]); expanding it writes no B·K·H·W tensor.
    return grad_activations, grad_gradients.expand_as(gradients), None, None, None, None


torch.library.register_autograd("amc_kernels::gradcam_fwd", _backward, setup_context=_setup_context)
forbid_double_backward(OP)
register_compiled(OP, gradcam)
