"""Host plumbing shared by the Triton ops: their definition, how kernels launch, small helpers.

Each op is a pair ``amc_kernels::<op>_triton_fwd`` / ``<op>_triton_bwd`` defined with
:func:`triton_op`, whose schemas are those of the C++ ``<op>_fwd`` / ``<op>_bwd`` (the argument
protocol of :mod:`amc_kernels._register`). On CUDA tensors the kernels launch through
``torch.library.wrap_triton``, so ``torch.compile(fullgraph=True)`` traces them; on CPU
tensors they run only under the Triton interpreter (the backend's refusals are in
``amc_kernels._dispatch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .._spec import compute_dtype


def triton_op(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Define amc_kernels::<name> with torch.library.triton_op and the C++ ops' schema types.

    The schema is inferred from the annotations, except that an ``int`` option stays ``int``
    (inference would make it ``SymInt``, where the C++ schemas say ``int``).
    """

    def define(fn: Callable[..., Any]) -> Any:
        schema = torch.library.infer_schema(fn, mutates_args=()).replace("SymInt", "int")
        return torch.library.triton_op(f"amc_kernels::{name}", fn, mutates_args=(), schema=schema)

    return define


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher chose it: kernel, grid, arguments, constexprs/options."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


_recorded: list[list[Launch]] = []


@contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Within the block, launch() appends its Launch to the yielded list instead of launching.

    For ahead-of-time compilation (benchmarks/triton_aot_check.py): the launchers run on meta
    tensors and expose their GPU configurations without a GPU.
    """
    launches: list[Launch] = []
    _recorded.append(launches)
    try:
        yield launches
    finally:
        _recorded.pop()


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """Launch through torch.library.wrap_triton, so torch.compile traces the kernel.

    Nothing launches on meta tensors: they have no data, and the launcher's allocations are
    already the shape inference.
    """
    if _recorded:
        _recorded[-1].append(Launch(kernel, tuple(grid), args, kwargs))
        return
    if any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
        return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a one-element tensor of `like`'s compute dtype, for a kernel to load: a float
    argument would reach the kernel rounded to fp32."""
    return torch.full((1,), value, dtype=compute_dtype(like.dtype), device=like.device)


def not_computed(like: torch.Tensor) -> torch.Tensor:
    """The empty [0] gradient of an input whose output_mask flag is false (or that is absent)."""
    return like.new_empty((0,))


def reduce(per_item: torch.Tensor, reduction: str, count: int) -> torch.Tensor:
    """The reduction: the vector ("none"), its sum, or the sum over `count` items ("mean")."""
    if reduction == "none":
        return per_item
    total = per_item.sum()
    return total if reduction == "sum" else total / max(count, 1)


def mean_weights(grad: torch.Tensor, count: int, reduction: str) -> torch.Tensor:
    """∂L/∂item [count] of :func:`reduce` from its upstream gradient (a view, not a copy)."""
    if reduction == "none":
        return grad
    return (grad / (max(count, 1) if reduction == "mean" else 1)).expand(count)
