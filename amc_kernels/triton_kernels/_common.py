"""Shared plumbing of the Triton backend: when it may run, how kernels launch, registration.

On CUDA tensors the kernels launch through ``torch.library.wrap_triton`` inside
``torch.library.triton_op`` ops, so ``torch.compile(fullgraph=True)`` traces them. On CPU tensors
they run only under the Triton interpreter (``TRITON_INTERPRET=1``, set before amc_kernels is
imported) and only when asked for explicitly: the automatic CPU order never lists triton.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .. import _dispatch
from .._dispatch import Call


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def device_refusals(call: Call) -> list[str]:
    """Why the Triton backend cannot run on this call's device (empty when it can)."""
    if call.device.type == "cuda":
        return []
    if call.device.type == "cpu":
        if interpreter_enabled():
            return []
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing"]
    return [f"needs CUDA tensors, got {call.device.type}"]


def register_triton(
    op: str, fn: Callable[..., Any], refusals: Callable[[Call], list[str]] = _dispatch.accept_all
) -> None:
    """Register `fn` (the reference's signature) as the triton implementation of `op`."""
    _dispatch.register(op, "triton", fn, lambda call: device_refusals(call) + refusals(call))
