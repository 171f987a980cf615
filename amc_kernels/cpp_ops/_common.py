"""Registration of the compiled ops of amc_kernels._C as the `cpp` and `cuda` backends.

Both backends call the same ``torch.ops.amc_kernels.<op>_fwd``; the dispatch key of the tensors
picks the CPU or the CUDA kernel. Each backend refuses a call whose device it does not serve or
whose kernel this build lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _dispatch
from .._dispatch import Call


@torch.compiler.assume_constant_result  # a build property: torch.compile(fullgraph=True) folds it
def has_kernel(schema: str, dispatch_key: str) -> bool:
    """Whether amc_kernels::<schema> has a kernel for the dispatch key ("CPU" or "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"amc_kernels::{schema}", dispatch_key)


def _device_refusals(op: str, call: Call, device_type: str, dispatch_key: str) -> list[str]:
    reasons = []
    if call.device.type != device_type:
        reasons.append(f"needs {device_type} tensors, got {call.device.type}")
    if not has_kernel(f"{op}_fwd", dispatch_key):
        reasons.append(f"amc_kernels._C has no {dispatch_key} kernel for {op}")
    return reasons


def register_compiled(
    op: str, fn: Callable[..., Any], refusals: Callable[[Call], list[str]] = _dispatch.accept_all
) -> None:
    """Register `fn` as the cpp (CPU tensors) and cuda (CUDA tensors) implementation of `op`."""
    for backend, device_type, key in (("cpp", "cpu", "CPU"), ("cuda", "cuda", "CUDA")):

        def backend_refusals(call: Call, device: str = device_type, key: str = key) -> list[str]:
            return _device_refusals(op, call, device, key) + refusals(call)

        _dispatch.register(op, backend, fn, backend_refusals)


def forbid_double_backward(op: str) -> None:
    """Differentiating amc_kernels::<op>_bwd raises a clear error instead of a silent zero."""

    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"amc_kernels.{op}: double backward is not supported by the cpp/cuda kernels; "
            f"use backend='reference' where second derivatives are needed"
        )

    torch.library.register_autograd(f"amc_kernels::{op}_bwd", backward)
