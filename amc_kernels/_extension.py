"""Loads the compiled extension amc_kernels._C, if it was built, and reads its build information."""

from __future__ import annotations

import functools
import json

import torch


@functools.cache
def load_error() -> str | None:
    """None when amc_kernels._C loaded; otherwise why it did not."""
    try:
        from . import _C  # noqa: F401  (importing registers the torch.ops.amc_kernels ops)
    except ImportError as error:
        return f"amc_kernels._C is not built ({error}); reinstall with the C++ build enabled"
    from .cpp_ops import selfcheck  # noqa: F401  (the self-check op's fake kernel)

    return None


def available() -> bool:
    return load_error() is None


def build_info() -> dict | None:
    """The build configuration compiled into amc_kernels._C, or None when it is not built."""
    if not available():
        return None
    return json.loads(torch.ops.amc_kernels.build_info())
