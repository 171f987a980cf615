"""The compiled ops of a backend (torch.ops.amc_kernels.*) and strided layouts: the pieces of
the conformance suite that follow from the contract."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._clamp_convention import CLAMP_GRAD_AT_BOUNDS
from .._register import library_op
from .._spec import SPECS, Arguments

#: Backend-independent trailing arguments of backward ops, by schema name (amc_kernels._register).
BACKWARD_EXTRAS = {"clamp_grad_at_bounds": CLAMP_GRAD_AT_BOUNDS}


def library_ops(op: str, backend: str) -> tuple[str, str | None] | None:
    """(forward, backward or None) names in torch.ops.amc_kernels of a compiled backend: cpp and
    cuda share <op>_fwd/_bwd, every other backend registers <op>_<backend>_fwd/_bwd."""
    if backend == "reference":
        return None
    prefix = op if backend in ("cpp", "cuda") else f"{op}_{backend}"
    return f"{prefix}_fwd", (f"{prefix}_bwd" if SPECS[op].differentiable else None)


def schema(name: str) -> str:
    return str(library_op(name).default._schema)


def forward_arguments(op: str, arguments: Arguments) -> list[Any]:
    """The positional arguments of the forward op: the checked tensors, then the options as
    the kernels encode them."""
    spec = SPECS[op]
    return spec.kernel_arguments(spec.validate(dict(arguments)))


def backward_arguments(
    op: str,
    bwd: str,
    forward: Sequence[Any],
    outputs: Sequence[torch.Tensor],
    grad: torch.Tensor,
    output_mask: Sequence[bool],
) -> list[Any]:
    """(grad, *tensors, *saved, *options, *extras, output_mask) for the backward op `bwd`, from
    the forward op's arguments and outputs; the extras are read off the schema by name."""
    spec = SPECS[op]
    count = len(spec.tensors)
    tensors = [t.detach() if isinstance(t, torch.Tensor) else t for t in forward[:count]]
    saved = list(outputs[spec.results :])
    names = [a.name for a in library_op(bwd).default._schema.arguments]
    first_extra = 1 + count + len(saved) + len(spec.kernel_options)
    extras = [BACKWARD_EXTRAS[name] for name in names[first_extra:-1]]
    return [grad, *tensors, *saved, *forward[count:], *extras, list(output_mask)]


# --- layouts ---

_GAP_FILL = {torch.bool: True}


def strided_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of a copy of `t`, with the same values and other strides.

    - ``"strided"``: every other element, from the second on (a storage offset too), of a
      buffer twice as wide in the last dimension. The gaps hold NaN (floating), 0 (integers: an
      index that is always in range, so that a kernel ignoring the strides computes wrong
      values rather than reading out of bounds) or True (bools).
    - ``"transposed"``: column-major in the last two dimensions.
    - ``"channels-last"``: dimension 1 innermost (torch.channels_last for 4-D tensors).

    A layout that does not apply to `t` (transposed 1-D, channels-last below 3-D) is strided.
    """
    if t.dim() == 0:
        return t.clone()
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels-last" and t.dim() >= 3:
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide.fill_(math.nan if t.is_floating_point() else _GAP_FILL.get(t.dtype, 0))
    view = wide[..., 1::2]
    view.copy_(t)
    return view


def non_contiguous(arguments: Arguments, layout: str) -> Arguments:
    """Every tensor argument replaced by a :func:`strided_view` with the same values."""
    return {
        k: strided_view(v, layout) if isinstance(v, torch.Tensor) else v
        for k, v in arguments.items()
    }
