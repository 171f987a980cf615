"""Running an op on a backend and comparing it with the reference (docs/design.md#7-tests)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import _dispatch, functional
from .._spec import SPECS, Arguments

#: Absolute floors of the low-precision rule, per compute dtype of the inputs.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
#: |e − boundary| under which a backend's keep decision may follow its own rounding.
MASK_NEAR = 1e-5


def as_arguments(op: str, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> Arguments:
    """(args, kwargs) of a call to ``functional.<op>`` as the arguments by name."""
    bound = inspect.signature(getattr(functional, op)).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("backend", None)
    return arguments


def call(op: str, backend: str | None, arguments: Arguments) -> Any:
    return getattr(functional, op)(**arguments, backend=backend)


def dispatch_call(op: str, arguments: Arguments) -> _dispatch.Call:
    """The metadata that dispatch sees for these arguments (as functional.run builds it)."""
    spec = SPECS[op]
    checked = spec.validate(dict(arguments))
    tensors = [checked[name] for name in spec.tensors if checked[name] is not None]
    options = {o.name: checked[o.name] for o in spec.options}
    shapes = tuple(tuple(t.shape) for t in tensors)
    return _dispatch.Call(op, tensors[0].device, tensors[0].dtype, shapes, options)


def differentiable_inputs(op: str, arguments: Arguments) -> list[str]:
    """The differentiable arguments given as tensors in this call (a learnable option given as
    a number is not one)."""
    return [
        name for name in SPECS[op].differentiable if isinstance(arguments.get(name), torch.Tensor)
    ]


def run_with_grads(
    op: str,
    backend: str | None,
    arguments: Arguments,
    *,
    wrt: Sequence[str] | None = None,
    projection: str = "weighted",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(outputs, gradients): the op's outputs and the gradients, with respect to `wrt` (every
    differentiable input by default), of a fixed projection of its differentiable result:
    ``"weighted"`` (a ramp of weights) or ``"sum"`` (an expanded, stride-0 upstream gradient)."""
    spec = SPECS[op]
    wrt = differentiable_inputs(op, arguments) if wrt is None else list(wrt)
    leaves = dict(arguments)
    for name in wrt:
        leaves[name] = arguments[name].detach().clone().requires_grad_()
    result = call(op, backend, leaves)
    outputs = list(result) if spec.results > 1 else [result]
    if not wrt:
        return [o.detach() for o in outputs], []
    out = outputs[0]
    if projection == "sum":
        target = out.sum()
    else:
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device)
        target = (out.flatten() * weights).sum()
    # an input that an empty batch leaves out of the graph gets a zero gradient
    grads = torch.autograd.grad(
        target, [leaves[name] for name in wrt], allow_unused=True, materialize_grads=True
    )
    return [o.detach() for o in outputs], list(grads)


def _upcast(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def within_reference_error(
    got: torch.Tensor, same_dtype_ref: torch.Tensor, fp64_ref: torch.Tensor, floor: float
) -> tuple[bool, float, float]:
    """(ok, kernel error, bound): max|got − ref64| ≤ 2·max|ref − ref64| + floor·(1 + max|ref64|)."""
    fp64_ref = fp64_ref.double()
    error = (got.double() - fp64_ref).abs().max().item() if got.numel() else 0.0
    ref_error = (same_dtype_ref.double() - fp64_ref).abs().max().item() if got.numel() else 0.0
    scale = fp64_ref.abs().max().item() if got.numel() else 0.0
    bound = 2 * ref_error + floor * (1 + scale)
    return error <= bound, error, bound


def _floating_dtype(op: str, arguments: Arguments) -> torch.dtype:
    return next(
        arguments[name].dtype
        for name in SPECS[op].tensors
        if isinstance(arguments.get(name), torch.Tensor) and arguments[name].is_floating_point()
    )


def compare_backend(
    op: str, backend: str, arguments: Arguments | Sequence[Any], kwargs: dict | None = None
) -> tuple[bool, float, float]:
    """`backend` against the reference in the same dtype and in fp64: (ok, worst error, bound).

    `arguments` are the op's arguments by name, or positional arguments of ``functional.<op>``
    with `kwargs`. The value and the gradient of every differentiable input must have the
    reference's shape and dtype, and lie within the low-precision rule of docs/design.md#7-tests.
    """
    if not isinstance(arguments, dict):
        arguments = as_arguments(op, arguments, kwargs)
    elif kwargs:
        arguments = arguments | kwargs
    if op == "saliency_mask":
        return compare_masks(backend, arguments)
    dtype = _floating_dtype(op, arguments)
    got_out, got_grads = run_with_grads(op, backend, arguments)
    same_out, same_grads = run_with_grads(op, "reference", arguments)
    exact_out, exact_grads = run_with_grads(
        op, "reference", {k: _upcast(v) for k, v in arguments.items()}
    )
    results = []
    for g, s, e in zip(
        [got_out[0], *got_grads],
        [same_out[0], *same_grads],
        [exact_out[0], *exact_grads],
        strict=True,
    ):
        if g.shape != e.shape or g.dtype != s.dtype:
            results.append((False, math.inf, 0.0))
        else:
            results.append(within_reference_error(g, s, e, FLOOR[dtype]))
    worst = max(results, key=lambda r: r[1] / r[2] if r[2] else (math.inf if r[1] else 0.0))
    return all(ok for ok, _, _ in results), worst[1], worst[2]


def compare_masks(backend: str, arguments: Arguments) -> tuple[bool, float, float]:
    """saliency_mask against the reference: (ok, decisions that differ, 0).

    The keep masks must agree except for pixels whose fp64 normalised saliency e lies within
    MASK_NEAR of the decision boundary (the threshold, or the k-th largest e); top_fraction
    keeps exactly k pixels per image; the masked images follow the backend's own mask exactly.
    """
    from ..reference.gradcam import normalize_maps, resize_maps
    from ..reference.saliency_mask import kept_pixel_count

    images, saliency = arguments["images"], arguments["saliency"]
    masked, keep = call("saliency_mask", backend, arguments)
    ref_masked, ref_keep = call("saliency_mask", "reference", arguments)
    if (
        keep.dtype != torch.bool
        or masked.dtype != images.dtype
        or keep.shape != ref_keep.shape
        or masked.shape != ref_masked.shape
    ):
        return False, math.inf, 0.0
    fill = torch.full_like(images, arguments["fill"])
    follows = bool(torch.equal(masked, torch.where(keep[:, None], images, fill)))
    if not keep.numel():
        return follows, 0.0, 0.0
    size = tuple(images.shape[2:])
    e = normalize_maps(resize_maps(saliency.double(), size), "minmax").flatten(1)
    keep, ref_keep = keep.flatten(1).cpu(), ref_keep.flatten(1).cpu()
    e = e.cpu()
    if arguments["top_fraction"] is None:
        boundary = torch.full_like(e[:, :1], float(arguments["threshold"]))
        counts_ok = True
    else:
        k = kept_pixel_count(arguments["top_fraction"], e.shape[1])
        counts_ok = bool((keep.sum(1) == k).all())
        boundary = e.sort(dim=1, descending=True).values[:, max(k - 1, 0)][:, None]
    differs = (keep != ref_keep) & ((e - boundary).abs() >= MASK_NEAR)
    count = int(differs.sum())
    return follows and counts_ok and count == 0, float(count), 0.0
