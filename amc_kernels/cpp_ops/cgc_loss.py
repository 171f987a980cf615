"""torch.ops.amc_kernels.cgc_loss_{fwd,bwd}: fake kernels, autograd, cpp/cuda backends."""

from __future__ import annotations

from typing import Any

import torch

from ._common import forbid_double_backward, register_compiled

OP = "cgc_loss"


@torch.library.register_fake("amc_kernels::cgc_loss_fwd")
def _(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> torch.Tensor:
    dtype = torch.float64 if cam_orig.dtype == torch.float64 else torch.float32
    return cam_orig.new_empty((), dtype=dtype)


@torch.library.register_fake("amc_kernels::cgc_loss_bwd")
def _(
    grad: torch.Tensor,
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return cam_orig.new_empty(cam_orig.shape), cam_aug.new_empty(cam_aug.shape)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    cam_orig, cam_aug, crops, flips, temperature, size = inputs
    ctx.options = (temperature, size)
    ctx.save_for_backward(cam_orig, cam_aug, crops, flips)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    cam_orig, cam_aug, crops, flips = ctx.saved_tensors
    grad_orig, grad_aug = torch.ops.amc_kernels.cgc_loss_bwd(
        grad, cam_orig, cam_aug, crops, flips, *ctx.options
    )
    return grad_orig, grad_aug, None, None, None, None


torch.library.register_autograd(
    "amc_kernels::cgc_loss_fwd", _backward, setup_context=_setup_context
)
forbid_double_backward(OP)


def cgc_loss(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    *,
    temperature: float = 0.5,
    size: int = 224,
) -> torch.Tensor:
    """The reference's signature on the compiled kernels (inputs validated by the caller)."""
    return torch.ops.amc_kernels.cgc_loss_fwd(
        cam_orig, cam_aug, crops, flips, float(temperature), int(size)
    )


register_compiled(OP, cgc_loss)
