"""One case measured in this process (docs/design.md#6-benchmarks): every mode's warm-up, peak
memory and time.

A case is (op, variant, size, dim, dtype, provider). Its inputs are drawn fresh, seeded by the
case so that every provider of a size gets the same values; the inputs that need a gradient
require it in every mode, and the output gradient is drawn outside the timed region. A warm-up
call of each mode comes first, so compilation is never timed. A failure is recorded as the
mode's result (refused, oom or error), never raised.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from amc_kernels import _dispatch, functional

from ._harness import DTYPES, Draw, Inputs, OpBench, Variant, load
from ._memory import peak_memory_mb
from ._timing import quantiles, time_samples_ms

REFERENCE = "reference"
COMPILED = "reference+compile"
#: Value checks synchronise with the device and cost the same for every backend: off by default.
CHECK_VALUES = "AMC_KERNELS_CHECK_VALUES"


@dataclass(frozen=True)
class Case:
    op: str
    variant: str
    n: int
    d: int
    dtype: str
    device: str
    provider: str
    modes: tuple[str, ...]

    @property
    def seed_key(self) -> str:  # the same inputs for every provider of a size
        return f"{self.op}/{self.variant}/{self.n}/{self.d}/{self.dtype}"

    @property
    def line(self) -> tuple[str, str, str, int, str]:  # the cases that differ only in size
        return self.op, self.variant, self.dtype, self.d, self.provider


@dataclass(frozen=True)
class ModeResult:
    mode: str
    status: str  # ok, skipped, refused, oom, killed, timeout, error or budget (not run)
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    samples: int | None = None
    peak_mb: float | None = None
    peak_above_inputs_mb: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Outcome:
    shapes: str
    results: tuple[ModeResult, ...]


_COMPILED: dict[str, Callable[..., Any]] = {}


def compiled_reference(op: str) -> Callable[..., Any]:
    """The public op on the reference backend under torch.compile, one per process."""
    if op not in _COMPILED:
        import torch._dynamo.config
        import torch._functorch.config

        # The backward mode re-runs one graph's backward (retain_graph), which donated buffers
        # forbid; more cache entries let one process compile every dtype and variant.
        if hasattr(torch._functorch.config, "donated_buffer"):
            torch._functorch.config.donated_buffer = False
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        reference = functools.partial(getattr(functional, op), backend=REFERENCE)
        _COMPILED[op] = torch.compile(reference, dynamic=True)
    return _COMPILED[op]


def _forward(
    bench: OpBench, variant: Variant, provider: str, inputs: Inputs
) -> tuple[Callable[[], Any], bool]:
    """The provider's forward pass on `inputs`, and whether it has a gradient."""
    args, kwargs = inputs.args, inputs.kwargs
    if provider == COMPILED:
        compiled = compiled_reference(bench.op)
        return lambda: compiled(*args, **kwargs), True
    if provider in _dispatch.BACKENDS:
        op = getattr(functional, bench.op)
        return lambda: op(*args, **kwargs, backend=provider), True
    peer = next(p for p in variant.peers if p.name == provider)
    return peer.build(inputs), peer.differentiable


def describe_inputs(op: str, inputs: Inputs) -> str:
    """The tensor arguments' names and shapes, e.g. ``features[256,2,128] labels[256]``."""
    names = list(inspect.signature(getattr(functional, op)).parameters)
    named = [*zip(names, inputs.args, strict=False), *inputs.kwargs.items()]
    return " ".join(
        f"{name}[{','.join(map(str, value.shape))}]"
        for name, value in named
        if isinstance(value, torch.Tensor)
    )


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def failure(mode: str, error: BaseException) -> ModeResult:
    """A mode's result for the error it raised: refused, oom or error, with the message."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if isinstance(error, _dispatch.BackendUnavailableError):
        return ModeResult(mode, "refused", note=text)
    if isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text:
        return ModeResult(mode, "oom", note=text)
    return ModeResult(mode, "error", note=f"{type(error).__name__}: {text}")


def _measure_mode(
    mode: str, step: Callable[[], Any], device: torch.device, min_time: float
) -> ModeResult:
    step()  # warm-up: compiles the backward, loads lazy state
    memory = peak_memory_mb(step, device)
    times = time_samples_ms(step, device, min_time)
    median, p20, p80 = quantiles(times)
    return ModeResult(
        mode,
        "ok",
        median,
        p20,
        p80,
        len(times),
        memory[0] if memory else None,
        memory[1] if memory else None,
        "" if memory else "peak memory needs Linux /proc/self/clear_refs",
    )


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """Within the block, `name` is `value` unless the environment already sets it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]


def measure(case: Case, min_time: float) -> Outcome:
    """Every mode of one case in this process: warm-up, peak memory, then timing."""
    with _env_default(CHECK_VALUES, "0"):
        return _measure(case, min_time)


def _measure(case: Case, min_time: float) -> Outcome:
    bench = load(case.op)
    variant = bench.variant(case.variant)
    device = torch.device(case.device)
    results: list[ModeResult] = []
    shapes = ""
    try:
        draw = Draw.seeded(device, DTYPES[case.dtype], case.seed_key)
        inputs = variant.inputs(draw, case.n, case.d)
        shapes = describe_inputs(case.op, inputs)
        leaves = [inputs.args[i].requires_grad_() for i in inputs.grads]
        forward, differentiable = _forward(bench, variant, case.provider, inputs)
        out = _first_tensor(forward())  # the first call compiles; it is never timed
        differentiable = differentiable and bool(leaves) and out.requires_grad
        grad_out = draw.normal(*out.shape).to(out.dtype) if differentiable else None

        def backward() -> Any:
            return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

        def forward_backward() -> Any:
            return torch.autograd.grad(_first_tensor(forward()), leaves, grad_out)

        steps = {"forward": forward, "backward": backward, "forward+backward": forward_backward}
        for mode in case.modes:
            if mode != "forward" and not differentiable:
                results.append(ModeResult(mode, "skipped", note=f"{case.provider}: no gradient"))
                continue
            results.append(_measure_mode(mode, steps[mode], device, min_time))
    except Exception as error:  # recorded as the case's result; the sweep goes on
        results.append(failure(case.modes[len(results)], error))
    return Outcome(shapes, tuple(results))
