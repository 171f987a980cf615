"""The gradient convention of the running torch's clamp at its bounds, which the kernels follow.

torch.clamp(x, lo, hi) has no derivative at x = lo or x = hi. Older torch versions pass the
gradient there (subgradient 1); newer ones give the minimum-norm subgradient 0
(pytorch/pytorch#184574; torch 2.14 does). The reference inherits the convention of the torch
it runs on, so the C++ and Triton backward kernels take it as an argument, measured once at import.
"""

from __future__ import annotations

import torch


def clamp_grad_at_bounds() -> bool:
    """Whether d clamp(x, lo, hi)/dx is 1 (not 0) at x = hi in this torch."""
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.ones((), dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(x.clamp(-1.0, 1.0), x)
    return bool(grad.item() == 1.0)


CLAMP_GRAD_AT_BOUNDS = clamp_grad_at_bounds()
