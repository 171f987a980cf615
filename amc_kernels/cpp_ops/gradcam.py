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
    return activations.new_empty(activations.shape), gradients.new_empty(gradients.shape)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    activations, gradients, *options = inputs
    _, raw, alpha = output
    ctx.mark_non_differentiable(raw, alpha)
    ctx.save_for_backward(activations, gradients, raw, alpha)
    ctx.options = options


def _backward(ctx: Any, grad: torch.Tensor, _grad_raw: Any, _grad_alpha: Any) -> tuple:
    grad_activations, grad_gradients = torch.ops.amc_kernels.gradcam_bwd(
        grad, *ctx.saved_tensors, *ctx.options
    )
    return grad_activations, grad_gradients, None, None, None, None


torch.library.register_autograd("amc_kernels::gradcam_fwd", _backward, setup_context=_setup_context)
forbid_double_backward(OP)
register_compiled(OP, gradcam)
