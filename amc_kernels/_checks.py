"""Input validation for the public API. Every message names the op and the argument and says
what to fix. Metadata checks always run; value checks (NaN, index ranges, crop bounds) read the
data, so they are skipped while torch.compile traces and can be turned off with
AMC_KERNELS_CHECK_VALUES=0 where their device synchronisation matters."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import torch

ENV_CHECK_VALUES = "AMC_KERNELS_CHECK_VALUES"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def value_checks_enabled(x: torch.Tensor | None = None) -> bool:
    """Whether to read x's values: not while torch.compile traces, not for meta tensors (they
    have no values: shape inference), and not with AMC_KERNELS_CHECK_VALUES=0."""
    if torch.compiler.is_compiling() or (x is not None and x.is_meta):
        return False
    return os.environ.get(ENV_CHECK_VALUES, "1").strip() not in ("0", "false", "off")


def tensor(op: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(op: str, name: str, value: object) -> torch.Tensor:
    x = tensor(op, name, value)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got {x.dtype}; convert it with .float()"
        )
    return x


def integer(op: str, name: str, value: object, what: str = "class indices") -> torch.Tensor:
    x = tensor(op, name, value)
    if x.dtype not in INT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be an integer tensor of {what}, got {x.dtype}; "
            f"convert it with .long()"
        )
    return x


def boolean(op: str, name: str, value: object) -> torch.Tensor:
    x = tensor(op, name, value)
    if x.dtype != torch.bool:
        raise TypeError(
            f"{op}: {name} must be a bool tensor, got {x.dtype}; convert it with .bool()"
        )
    return x


def ndim(op: str, name: str, x: torch.Tensor, dims: Sequence[int], layout: str) -> None:
    if x.dim() not in dims:
        raise ValueError(f"{op}: {name} must have shape {layout}, got {tuple(x.shape)}")


def size(op: str, name: str, x: torch.Tensor, dim: int, expected: int, why: str) -> None:
    if x.shape[dim] != expected:
        raise ValueError(
            f"{op}: {name} has size {x.shape[dim]} in dimension {dim} but must have {expected} "
            f"({why}); got shape {tuple(x.shape)}"
        )


def same_device(op: str, name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if x.device != other.device:
        raise ValueError(
            f"{op}: {name} is on {x.device} but {other_name} is on {other.device}; "
            f"move them to the same device with .to({other_name}.device)"
        )


def same_dtype(op: str, name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if x.dtype != other.dtype:
        raise TypeError(
            f"{op}: {name} has dtype {x.dtype} but {other_name} has {other.dtype}; "
            f"convert one with .to({other_name}.dtype)"
        )


def choice(op: str, name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{op}: {name} must be one of {options}; got {value!r}")


def real(op: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return float(value)


def positive(op: str, name: str, value: object) -> float:
    number = real(op, name, value)
    if number <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    return number


def in_range(op: str, name: str, value: object, low: float, high: float) -> float:
    """low < value ≤ high."""
    number = real(op, name, value)
    if not low < number <= high:
        raise ValueError(f"{op}: {name} must be in ({low}, {high}], got {value}")
    return number


def between(op: str, name: str, value: object, low: float, high: float) -> float:
    """low ≤ value ≤ high."""
    number = real(op, name, value)
    if not low <= number <= high:
        raise ValueError(f"{op}: {name} must be in [{low}, {high}], got {value}")
    return number


def positive_int(op: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    return int(value)


def size_pair(op: str, name: str, value: object) -> tuple[int, int]:
    """An int s (meaning (s, s)) or a pair (h, w) of positive ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(
                f"{op}: {name} must be an int or a pair (height, width), got {value!r}"
            )
        return positive_int(op, name, value[0]), positive_int(op, name, value[1])
    side = positive_int(op, name, value)
    return side, side


def finite_values(op: str, name: str, x: torch.Tensor) -> None:
    """No NaN or ±inf in x: one aminmax pass (NaN propagates to both ends), one sync, no
    tensor of x's size (isfinite(x).all() costs 40× more on CPU)."""
    if (
        value_checks_enabled(x)
        and x.numel()
        and not bool(torch.stack(torch.aminmax(x)).isfinite().all())
    ):
        raise ValueError(
            f"{op}: {name} contains NaN or infinite values; check the model's outputs "
            f"(or set {ENV_CHECK_VALUES}=0 to skip this check)"
        )


def positive_values(op: str, name: str, x: torch.Tensor) -> None:
    """Every entry finite and > 0 (a tensor-valued temperature)."""
    if value_checks_enabled(x) and x.numel():
        low, high = (float(v) for v in torch.stack(torch.aminmax(x.detach())).tolist())
        if not (low > 0 and math.isfinite(high)):
            raise ValueError(f"{op}: {name} must be finite and > 0, got {x.detach().tolist()}")


def index_values(op: str, name: str, x: torch.Tensor, upper: int, upper_name: str) -> None:
    """0 ≤ x < upper for every entry."""
    if value_checks_enabled(x) and x.numel():
        low, high = (int(v) for v in torch.stack(torch.aminmax(x)).tolist())
        if low < 0 or high >= upper:
            raise ValueError(
                f"{op}: {name} must lie in [0, {upper}) ({upper_name}), "
                f"got values in [{low}, {high}]"
            )
