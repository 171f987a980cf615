"""The one registration path of the compiled backends (cpp, cuda, triton).

Every compiled backend of an op provides two ops in ``torch.ops.amc_kernels`` with one argument
protocol, the op's spec (docs/design.md#31-one-contract-per-op):

- ``<fwd>(*tensors, *options) -> (*results, *saved)``: the spec's tensors in order, then its
  options as the kernels encode them; the user's results, then the statistics saved for the
  backward (``spec.saved``, never differentiable).
- ``<bwd>(grad, *tensors, *saved, *options, *extras, bool[] output_mask) -> grads``: the
  gradient of the (single) differentiable result, then what the forward received and saved,
  then backend-independent extras (such as the clamp convention), then one flag per
  differentiable input: a gradient whose flag is false is not computed and comes back empty.
  A gradient may come back broadcastable to its input (it is expanded, never copied).

:func:`register_autograd` registers the autograd formula of a forward op and the clear error of
differentiating its backward; :func:`forward_function` is the implementation that the dispatcher
calls with the spec's arguments by keyword.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._spec import OpSpec


def library_op(name: str) -> Any:
    return getattr(torch.ops.amc_kernels, name)


def forward_function(spec: OpSpec, fwd: str) -> Callable[..., Any]:
    """The spec's arguments by keyword → the forward op → the user's result(s)."""

    def run(**arguments: Any) -> Any:
        outputs = library_op(fwd)(*spec.kernel_arguments(arguments))
        if spec.results == 1:
            return outputs[0] if isinstance(outputs, tuple | list) else outputs
        return tuple(outputs[: spec.results])

    run.__name__ = run.__qualname__ = spec.name
    run.__doc__ = (
        f"{spec.name} through torch.ops.amc_kernels.{fwd} (inputs validated by the caller)."
    )
    return run


def register_autograd(
    spec: OpSpec, fwd: str, bwd: str, backend: str, extras: Sequence[Any] = ()
) -> None:
    """Autograd of amc_kernels::<fwd> through amc_kernels::<bwd>, and no double backward."""
    count = len(spec.tensors)
    positions = spec.differentiable_positions

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        outputs = output if isinstance(output, tuple | list) else (output,)
        saved = outputs[spec.results :]
        ctx.mark_non_differentiable(*saved)
        ctx.save_for_backward(*inputs[:count], *saved)
        ctx.options = inputs[count:]

    def backward(ctx: Any, grad: torch.Tensor, *_saved_grads: Any) -> tuple:
        saved = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[i]) for i in positions]
        grads = library_op(bwd)(grad, *saved, *ctx.options, *extras, mask)
        grads = grads if isinstance(grads, tuple | list) else (grads,)
        result: list[torch.Tensor | None] = [None] * (count + len(ctx.options))
        for position, needed, gradient in zip(positions, mask, grads, strict=True):
            if needed:
                result[position] = gradient.expand_as(saved[position])
        return tuple(result)

    torch.library.register_autograd(f"amc_kernels::{fwd}", backward, setup_context=setup_context)
    forbid_double_backward(spec, bwd, backend)


def forbid_double_backward(spec: OpSpec, bwd: str, backend: str) -> None:
    """Differentiating amc_kernels::<bwd> raises a clear error instead of a silent zero."""

    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"amc_kernels.{spec.name}: double backward is not supported by the {backend} "
            f"kernels (amc_kernels::{bwd}); use backend='reference' for second derivatives"
        )

    torch.library.register_autograd(f"amc_kernels::{bwd}", backward)


__all__ = ["forward_function", "register_autograd"]
