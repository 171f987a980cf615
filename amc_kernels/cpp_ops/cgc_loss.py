"""torch.ops.amc_kernels.cgc_loss_{fwd,bwd}: fake kernels and registration."""

from __future__ import annotations

import torch

from .._register import forward_function, register_autograd
from .._spec import CGC_LOSS, compute_dtype


@torch.library.register_fake("amc_kernels::cgc_loss_fwd")
def _(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> torch.Tensor:
    return cam_orig.new_empty((), dtype=compute_dtype(cam_orig.dtype))


@torch.library.register_fake("amc_kernels::cgc_loss_bwd")
def _(
    grad: torch.Tensor,
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        cam_orig.new_empty(cam_orig.shape if output_mask[0] else (0,)),
        cam_aug.new_empty(cam_aug.shape if output_mask[1] else (0,)),
    )


register_autograd(CGC_LOSS, "cgc_loss_fwd", "cgc_loss_bwd", "cpp/cuda")
cgc_loss = forward_function(CGC_LOSS, "cgc_loss_fwd")
