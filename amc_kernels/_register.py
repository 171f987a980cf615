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

:func:`register_fakes` registers the fake (meta) kernels of a C++ op family from the output
shapes of its forward, read off the spec (the triton ops need none: ``triton_op`` traces the
launcher); :func:`register_autograd` registers the autograd formula of a forward op and the
clear error of differentiating its backward; :func:`forward_function` is the implementation that
the dispatcher calls with the spec's arguments by keyword. Both also register every forward and
backward op to run with autocast off (:func:`run_without_autocast`), so that nothing a kernel
calls inside is recast by ``torch.autocast`` (the public functions promote the inputs first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._spec import Arguments, OpSpec

#: The autocast dispatch keys that :func:`run_without_autocast` covers.
AUTOCAST_KEYS = ("AutocastCPU", "AutocastCUDA")
_LIBRARY = torch.library.Library("amc_kernels", "IMPL")


def library_op(name: str) -> Any:
    return getattr(torch.ops.amc_kernels, name)


def run_without_autocast(name: str) -> None:
    """amc_kernels::<name> under torch.autocast runs as it does outside, its inputs uncast.

    A kernel's inner ATen calls (a GEMM, a conversion) would otherwise be recast to fp16/bf16
    by autocast: the CPU kernels then read a buffer of the wrong dtype. As
    torch.library.register_autocast, but without casting the inputs.
    """
    op = library_op(name).default
    for key_name in AUTOCAST_KEYS:
        key = getattr(torch._C.DispatchKey, key_name)

        def without_autocast(*args: Any, key: Any = key) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*args)

        op.py_kernels.pop(key, None)  # the Python dispatcher's (tracing), replaced on reload
        op.py_impl(key)(without_autocast)
        _LIBRARY.impl(
            name, lambda _, *args, f=without_autocast: f(*args), key_name, with_keyset=True
        )


def forward_function(spec: OpSpec, fwd: str) -> Callable[..., Any]:
    """The spec's arguments by keyword → the forward op → the user's result(s)."""

    run_without_autocast(fwd)

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


def register_fakes(
    spec: OpSpec,
    fwd: str,
    outputs: Callable[[Arguments], Any],
    bwd: str | None = None,
    grad_shape: Callable[[str, Arguments], Sequence[int]] | None = None,
) -> None:
    """Fake kernels of amc_kernels::<fwd> and, if given, amc_kernels::<bwd>.

    The forward's: ``outputs`` of the spec's arguments by name. The backward's: one gradient per
    differentiable input, of the input's shape (or ``grad_shape(name, arguments)``) and dtype
    where output_mask requests it, else empty [0] (in the first tensor's dtype when the input is
    absent); ``arguments`` also holds the saved statistics.
    """
    options = spec.kernel_options
    forward_names = (*spec.tensors, *options)

    def forward(*args: Any) -> Any:
        return outputs(dict(zip(forward_names, args, strict=True)))

    torch.library.register_fake(f"amc_kernels::{fwd}", forward)
    if bwd is None:
        return
    backward_names = (*spec.tensors, *spec.saved, *options)

    def backward(grad: torch.Tensor, *args: Any) -> Any:
        arguments = dict(zip(backward_names, args[: len(backward_names)], strict=True))
        first = arguments[spec.tensors[0]]
        grads = []
        for name, needed in zip(spec.differentiable, args[-1], strict=True):
            x = arguments[spec.kernel_name(name)]
            if x is None or not needed:
                grads.append((first if x is None else x).new_empty((0,)))
            else:
                grads.append(x.new_empty(grad_shape(name, arguments) if grad_shape else x.shape))
        return grads[0] if len(grads) == 1 else tuple(grads)

    torch.library.register_fake(f"amc_kernels::{bwd}", backward)


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
        options = inputs[count:]  # a learnable option's tensor is saved with the tensors
        ctx.tensor_options = [i for i, v in enumerate(options) if isinstance(v, torch.Tensor)]
        ctx.save_for_backward(*inputs[:count], *saved, *(options[i] for i in ctx.tensor_options))
        ctx.options = [None if isinstance(v, torch.Tensor) else v for v in options]

    def backward(ctx: Any, grad: torch.Tensor, *_saved_grads: Any) -> tuple:
        split = len(ctx.saved_tensors) - len(ctx.tensor_options)
        saved, options = ctx.saved_tensors[:split], list(ctx.options)
        for i, tensor in zip(ctx.tensor_options, ctx.saved_tensors[split:], strict=True):
            options[i] = tensor
        inputs = (*saved[:count], *options)
        mask = [bool(ctx.needs_input_grad[i]) for i in positions]
        grads = library_op(bwd)(grad, *saved, *options, *extras, mask)
        grads = grads if isinstance(grads, tuple | list) else (grads,)
        result: list[torch.Tensor | None] = [None] * len(inputs)
        for position, needed, gradient in zip(positions, mask, grads, strict=True):
            if needed:
                result[position] = gradient.expand_as(inputs[position])
        return tuple(result)

    torch.library.register_autograd(f"amc_kernels::{fwd}", backward, setup_context=setup_context)
    forbid_double_backward(spec, bwd, backend)
    run_without_autocast(bwd)


def forbid_double_backward(spec: OpSpec, bwd: str, backend: str) -> None:
    """Differentiating amc_kernels::<bwd> raises a clear error instead of a silent zero."""

    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"amc_kernels.{spec.name}: double backward is not supported by the {backend} "
            f"kernels (amc_kernels::{bwd}); use backend='reference' for second derivatives"
        )

    torch.library.register_autograd(f"amc_kernels::{bwd}", backward)


__all__ = ["forward_function", "register_autograd", "register_fakes"]
