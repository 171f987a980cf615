"""The benchmark harness shared by every ``bench_<op>.py`` and ``amc-kernels bench`` (DESIGN §6).

A bench file declares one op (:class:`OpBench`): its variants, the sizes it sweeps, how to draw
fresh random inputs, its analytic FLOPs and bytes, and its peers. The harness turns that into
cases, one per (variant, size, dim, dtype, provider), and measures each mode of a case:

- time: median, p20 and p80 of ``torch.utils.benchmark`` blocks on CPU and of
  ``triton.testing.do_bench`` runs on CUDA, after a warm-up call (compilation is never timed);
- memory: on CUDA the allocator's peak; on CPU the peak resident set (Linux ``VmHWM``) of a fresh
  process per case, with the high-water mark reset before each mode. Both in total and above
  the baseline before the mode runs: the inputs (and, for ``backward``, the forward's graph);
- the roofline: the device's matmul rate and copy bandwidth, measured once per run.

Providers: ``reference`` (eager), ``reference+compile`` (the reference under
``torch.compile(dynamic=True)``), every other backend that the dispatcher accepts for the
device and dtype, and the op's peers when their package is installed. Inputs that need a
gradient require it in every mode; the output gradient is drawn outside the timed region.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import gc
import importlib
import importlib.util
import inspect
import multiprocessing
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.utils.benchmark as torch_benchmark

from amc_kernels import _dispatch, functional

from . import _results

MODES = ("forward", "backward", "forward+backward")
QUICK_MODES = ("forward", "forward+backward")
REFERENCE = "reference"
COMPILED = "reference+compile"
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
#: Value checks synchronise with the device and cost the same for every backend: off by default.
CHECK_VALUES = "AMC_KERNELS_CHECK_VALUES"
MIN_SAMPLES = 5
MB = 2**20
#: Failures after which a provider is not run at larger sizes.
STOPPING = ("refused", "oom", "killed", "timeout", "error")


# --- what a bench file declares ---


@dataclass(frozen=True)
class Draw:
    """Seeded random tensors on the case's device: fresh values for every case, never zeros."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator

    @classmethod
    def seeded(cls, device: torch.device, dtype: torch.dtype, key: str) -> Draw:
        generator = torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))
        return cls(device, dtype, generator)

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        unit = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return unit * (high - low) + low

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.generator, device=self.device)


@dataclass(frozen=True)
class Inputs:
    """One call's arguments; `grads` are the positions of the args the backward differentiates."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    grads: tuple[int, ...] = ()


@dataclass(frozen=True)
class Peer:
    """Another library's implementation of the same computation, on the same inputs."""

    name: str  # the provider name in the results
    package: str  # the module it needs; the peer is skipped with a note when it is missing
    build: Callable[[Inputs], Callable[[], Any]]  # the forward pass on these inputs
    differentiable: bool = True


@dataclass(frozen=True)
class Variant:
    name: str
    inputs: Callable[[Draw, int, int], Inputs]  # (draw, n, d) -> the call's arguments
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class Sweep:
    sizes: tuple[int, ...]
    dims: tuple[int, ...]
    dtypes: tuple[str, ...] = ("float32",)
    compile_dims: tuple[int, ...] | None = None  # where reference+compile runs (None: every dim)


Work = Callable[[str, int, int, int, str], tuple[float, float]]


@dataclass(frozen=True)
class OpBench:
    """One op's benchmark: what to sweep and how much work each call does."""

    op: str
    n_name: str  # the swept size, e.g. "N"
    d_name: str  # the second size, e.g. "D"
    variants: tuple[Variant, ...]
    work: Work  # (variant, n, d, bytes per element, mode) -> (analytic FLOPs, bytes)
    quick: Sweep  # `amc-kernels bench`: seconds on a laptop
    cpu: Sweep
    cuda: Sweep
    modes: tuple[str, ...] = MODES
    no_compile: str = ""  # why the reference is not benchmarked under torch.compile

    def sweep(self, name: str, device: torch.device) -> Sweep:
        if name == "quick":
            return self.quick
        return self.cuda if device.type == "cuda" else self.cpu

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def by_mode(
    forward: tuple[float, float], backward: tuple[float, float], mode: str
) -> tuple[float, float]:
    """(FLOPs, bytes) of a mode from those of the forward and of the backward."""
    if mode == "forward":
        return forward
    if mode == "backward":
        return backward
    return forward[0] + backward[0], forward[1] + backward[1]


def load_module(op: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.bench_{op}")


def load(op: str) -> OpBench:
    return load_module(op).BENCH


# --- one case, measured in the current process ---


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
    status: str  # ok, skipped, refused, oom, killed, timeout or error
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


def quantiles(samples_ms: Sequence[float]) -> tuple[float, float, float]:
    """(median, p20, p80), interpolating between the sorted samples."""
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0], samples_ms[0]
    deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
    return statistics.median(samples_ms), deciles[1], deciles[7]


def time_samples_ms(step: Callable[[], Any], device: torch.device, min_time: float) -> list[float]:
    """Per-call times in ms: do_bench runs on CUDA, torch.utils.benchmark blocks on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        rep = max(1.0, 1000 * min_time)
        return list(do_bench(step, warmup=rep / 4, rep=rep, return_mode="all"))
    timer = torch_benchmark.Timer(
        stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
    )
    measurement = timer.blocked_autorange(min_run_time=min_time)
    times = list(measurement.times)
    deadline = time.perf_counter() + 4 * min_time
    while len(times) < MIN_SAMPLES and time.perf_counter() < deadline:
        times += timer.timeit(measurement.number_per_run).times
    return [1e3 * t for t in times]


def _status_bytes(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {name}")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).malloc_trim
    return None


def _reset_cpu_peak() -> bool:
    """Return freed heap memory to the OS, then reset this process's peak RSS to its RSS."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb(step: Callable[[], Any], device: torch.device) -> tuple[float, float] | None:
    """(peak, peak above the state before the call) of one call, in MB; None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        if not _reset_cpu_peak():
            return None
        base = _status_bytes("VmRSS")
        result = step()
        peak = _status_bytes("VmHWM")
    del result
    return peak / MB, max(peak - base, 0) / MB


def _failure(mode: str, error: BaseException) -> ModeResult:
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
        results.append(_failure(case.modes[len(results)], error))
    return Outcome(shapes, tuple(results))


# --- where a case runs ---


def _child(case: Case, min_time: float, sender: Any) -> None:
    """Entry point of a case's fresh process: measure, send the outcome back."""
    if case.provider == COMPILED:
        import torch._inductor.config

        torch._inductor.config.compile_threads = 1  # no worker pool to outlive the case
    try:
        outcome = measure(case, min_time)
    except BaseException as error:  # the parent must always get an answer
        outcome = Outcome("", (_failure(case.modes[0], error),))
    sender.send(outcome)
    sender.close()


class ForkedCases:
    """Runs each case in a fresh process, forked from a server that has imported the harness.

    A fresh process per case keeps one case's allocations from hiding another's peak; the fork
    server (it has done no tensor work, so no thread pool is copied) makes that cost
    milliseconds instead of a Python start-up.
    """

    def __init__(self, preload: Sequence[str], case_timeout: float) -> None:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        self.context = multiprocessing.get_context(method)
        if method == "forkserver":
            self.context.set_forkserver_preload([__name__, *preload])
        self.case_timeout = case_timeout

    def __call__(self, case: Case, min_time: float) -> Outcome:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child, args=(case, min_time, sender))
        process.start()
        sender.close()
        try:
            if receiver.poll(self.case_timeout):
                return receiver.recv()
            process.kill()
            status, note = "timeout", f"no result after {self.case_timeout:.0f} s"
        except EOFError:
            process.join()
            status, note = "killed", f"the case's process died (exit code {process.exitcode})"
            if process.exitcode == -9:
                note += ": killed, most likely out of memory"
        finally:
            process.join(timeout=30)  # a child that sent its outcome is finishing its exit
            if process.is_alive():
                process.kill()
                process.join()
            receiver.close()
        return Outcome("", (ModeResult(case.modes[0], status, note=note),))


def in_process(case: Case, min_time: float) -> Outcome:
    """Runs a case here (CUDA: the allocator's statistics are per call already)."""
    try:
        return measure(case, min_time)
    finally:
        gc.collect()
        torch.cuda.empty_cache()


# --- the device's roofline ---


@dataclass(frozen=True)
class Roofline:
    matmul_tflops: dict[str, float]  # per dtype name
    copy_gbps: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_size(device: torch.device, dtype: torch.dtype, largest: int) -> int:
    """The side, doubling from 256, at which one matmul takes 20 ms (or `largest`)."""
    size = 256
    while size < largest:
        a = torch.randn(size, size, device=device, dtype=dtype)
        a @ a  # first call: library initialisation
        _synchronize(device)
        began = time.perf_counter()
        a @ a
        _synchronize(device)
        if time.perf_counter() - began > 0.02:
            break
        size *= 2
    return size


def measure_roofline(device: torch.device, dtypes: Sequence[str], min_time: float) -> Roofline:
    """Square matmul rates (up to 8192² on CUDA, 2048² on CPU) and a large copy's bandwidth."""
    rates = {}
    for name in dtypes:
        size = _matmul_size(device, DTYPES[name], 8192 if device.type == "cuda" else 2048)
        a = torch.randn(size, size, device=device, dtype=DTYPES[name])
        b = torch.randn(size, size, device=device, dtype=DTYPES[name])
        median = quantiles(time_samples_ms(lambda a=a, b=b: a @ b, device, min_time))[0]
        rates[name] = 2 * size**3 / (median * 1e-3) / 1e12
        del a, b
    numel = 2**28 if device.type == "cuda" else 2**25
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    median = quantiles(time_samples_ms(lambda: target.copy_(source), device, min_time))[0]
    return Roofline(rates, 2 * numel * source.element_size() / (median * 1e-3) / 1e9)


# --- a run: cases, stopping rules, rows ---


@dataclass(frozen=True)
class Plan:
    """What a run measures; None means the sweep's own value."""

    device: torch.device
    sweep: str = "quick"
    sizes: tuple[int, ...] | None = None
    dims: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    variants: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    compile: bool = False
    min_time: float = 0.2
    max_ms: float = 1000.0
    time_budget: float | None = None
    case_timeout: float = 600.0


class Notes:
    """Why something was not run, grouped so that each reason prints once."""

    def __init__(self) -> None:
        self.ops: dict[str, list[str]] = {}

    def add(self, reason: str, op: str) -> None:
        ops = self.ops.setdefault(reason, [])
        if op not in ops:
            ops.append(op)

    def lines(self) -> list[str]:
        return [f"- {reason} [{', '.join(ops)}]" for reason, ops in self.ops.items()]


def providers(bench: OpBench, variant: Variant, dtype: str, plan: Plan, notes: Notes) -> list[str]:
    """The providers of one variant and dtype on the plan's device, noting each one left out."""
    names = [REFERENCE]
    if plan.compile and bench.no_compile:
        notes.add(f"{COMPILED} not run: {bench.no_compile}", bench.op)
    elif plan.compile:
        names.append(COMPILED)
    call = _dispatch.Call(bench.op, plan.device, DTYPES[dtype], ())
    for backend in _dispatch.BACKENDS[1:]:
        reasons = _dispatch.refusals(backend, call)
        if reasons:
            notes.add(
                f"{backend} not run ({dtype} on {plan.device.type}): {'; '.join(reasons)}", bench.op
            )
        else:
            names.append(backend)
    for peer in variant.peers:
        if importlib.util.find_spec(peer.package) is None:
            notes.add(f"peer {peer.name} not run: pip install {peer.package}", bench.op)
        else:
            names.append(peer.name)
    return [name for name in names if plan.providers is None or name in plan.providers]


def cases(bench: OpBench, plan: Plan, notes: Notes) -> list[Case]:
    """Every case of `bench` under `plan`, the smallest sizes of every configuration first."""
    sweep = bench.sweep(plan.sweep, plan.device)
    modes = plan.modes or (MODES if plan.sweep == "full" else QUICK_MODES)
    modes = tuple(mode for mode in modes if mode in bench.modes)
    if not modes:
        notes.add(f"not run: the op has only the modes {', '.join(bench.modes)}", bench.op)
        return []
    variants = [v for v in bench.variants if plan.variants is None or v.name in plan.variants]
    dtypes = plan.dtypes or sweep.dtypes
    compiled_dims = plan.dims or sweep.compile_dims or sweep.dims  # a user's --dims: all of them
    lineup = {(v.name, t): providers(bench, v, t, plan, notes) for v in variants for t in dtypes}
    return [
        Case(bench.op, v.name, n, d, t, str(plan.device), provider, modes)
        for n in plan.sizes or sweep.sizes
        for v in variants
        for t in dtypes
        for d in plan.dims or sweep.dims
        for provider in lineup[(v.name, t)]
        if provider != COMPILED or d in compiled_dims
    ]


def schedule(benches: Sequence[OpBench], plan: Plan, notes: Notes) -> list[tuple[OpBench, Case]]:
    """Every case; each op's i-th smallest size runs before any op's next size, so that a time
    budget cuts the largest sizes of every op alike."""
    ranked = []
    for bench in benches:
        op_cases = cases(bench, plan, notes)
        sizes = sorted({case.n for case in op_cases})
        ranked += [(sizes.index(case.n), bench, case) for case in op_cases]
    ranked.sort(key=lambda item: item[0])  # stable: the ops' own order within a rank
    return [(bench, case) for _, bench, case in ranked]


def _row(
    bench: OpBench,
    case: Case,
    shapes: str,
    result: ModeResult,
    run_info: dict[str, str],
    roofline: Roofline,
) -> dict[str, object]:
    itemsize = DTYPES[case.dtype].itemsize
    flops, nbytes = bench.work(case.variant, case.n, case.d, itemsize, result.mode)
    row: dict[str, object] = {
        **run_info,
        **dataclasses.asdict(result),
        **{"op": case.op, "variant": case.variant, "dtype": case.dtype, "shapes": shapes},
        **{"n_name": bench.n_name, "n": case.n, "d_name": bench.d_name, "d": case.d},
        **{"provider": case.provider, "flops": flops, "bytes": nbytes},
    }
    if result.status == "ok" and result.median_ms:
        tflops = flops / (result.median_ms * 1e-3) / 1e12
        gbps = nbytes / (result.median_ms * 1e-3) / 1e9
        matmul = roofline.matmul_tflops.get(case.dtype)
        row.update(
            tflops=tflops,
            gbps=gbps,
            matmul_peak_tflops=matmul,
            copy_peak_gbps=roofline.copy_gbps,
            frac_matmul_peak=tflops / matmul if matmul else None,
            frac_copy_peak=gbps / roofline.copy_gbps,
        )
    return row


def _preload(benches: Sequence[OpBench], todo: Sequence[tuple[OpBench, Case]]) -> list[str]:
    """What the fork server imports once instead of every case: bench files, peers, compiler."""
    modules = [f"{__package__}.bench_{bench.op}" for bench in benches]
    modules += sorted({p.package for b in benches for v in b.variants for p in v.peers})
    if any(case.provider == COMPILED for _, case in todo):
        modules += ["torch._dynamo", "torch._inductor.compile_fx"]
    return modules


def _stop_reason(results: Sequence[ModeResult], max_ms: float) -> str:
    for result in results:
        if result.status in STOPPING:
            return f"{result.status} ({result.note})" if result.note else result.status
        if result.median_ms is not None and result.median_ms > max_ms:
            return f"{result.mode} took {result.median_ms:.0f} ms > --max-ms {max_ms:.0f}"
    return ""


def _progress(bench: OpBench, case: Case, outcome: Outcome, began: float) -> str:
    times = ", ".join(
        f"{r.mode} {_results.format_ms(r.median_ms)} ms" if r.median_ms else f"{r.mode} {r.status}"
        for r in outcome.results
    )
    return (
        f"{case.op} {case.variant} {bench.n_name}={case.n} {bench.d_name}={case.d} "
        f"{case.dtype} {case.provider}: {times} ({time.monotonic() - began:.1f} s)"
    )


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def run(
    benches: Sequence[OpBench], plan: Plan, csv: Path | None = None, quiet: bool = False
) -> list[dict[str, object]]:
    """Measure every case of `benches`; append the rows to `csv`; print the table and notes."""
    notes = Notes()
    todo = schedule(benches, plan, notes)
    dtypes = sorted({case.dtype for _, case in todo})
    run_info = _results.provenance(plan.device)
    _say(f"measuring the roofline of {run_info['device']} ...", quiet)
    roofline = measure_roofline(plan.device, dtypes, plan.min_time)
    peaks = ", ".join(f"{t} {r:.3g}" for t, r in roofline.matmul_tflops.items())
    print(
        f"device: {run_info['device']}; matmul TFLOP/s: {peaks}; copy GB/s: "
        f"{roofline.copy_gbps:.3g}"
    )
    if plan.device.type == "cuda":
        runner: Callable[[Case, float], Outcome] = in_process
    else:
        runner = ForkedCases(_preload(benches, todo), plan.case_timeout)
    rows: list[dict[str, object]] = []
    stopped: set[tuple] = set()  # (op, variant, dtype, d, provider) that stop growing
    largest: dict[tuple, int] = {}
    for _, case in todo:
        largest[case.line] = max(largest.get(case.line, 0), case.n)
    started, over_budget = time.monotonic(), 0
    for index, (bench, case) in enumerate(todo, 1):
        if case.line in stopped:
            continue
        if plan.time_budget is not None and time.monotonic() - started > plan.time_budget:
            over_budget += 1
            notes.add(f"not run: the time budget of {plan.time_budget:.0f} s was spent", case.op)
            continue
        began = time.monotonic()
        outcome = runner(case, plan.min_time)
        new = [
            _row(bench, case, outcome.shapes, result, run_info, roofline)
            for result in outcome.results
            if result.status != "skipped"
        ]
        for result in outcome.results:
            if result.status == "skipped":
                notes.add(f"{result.mode} not run for {result.note}", case.op)
        rows += new
        if csv is not None and new:
            _results.append_rows(csv, new)
        reason = _stop_reason(outcome.results, plan.max_ms)
        if reason and case.n < largest[case.line]:
            stopped.add(case.line)
            notes.add(
                f"{case.provider} stopped growing at {bench.n_name}={case.n}: {reason}", case.op
            )
        _say(f"[{index}/{len(todo)}] {_progress(bench, case, outcome, began)}", quiet)
    _results.print_results(rows)
    if notes.ops:
        print("\nnot measured:")
        print("\n".join(notes.lines()))
    if over_budget:
        print(f"{over_budget} cases not run: time budget spent")
    if csv is not None:
        print(f"\n{len(rows)} rows appended to {csv}")
    return rows


# --- command lines: bench_<op>.py and amc-kernels bench ---


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def _names(allowed: Sequence[str] | None) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if allowed is not None and name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated names from {', '.join(allowed or ())}, got {text!r}"
            )
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser, *, cli: bool) -> None:
    """The options of ``amc-kernels bench`` (cli=True, which adds --op) and of bench_<op>.py."""
    if cli:
        parser.add_argument(
            "--op",
            action="append",
            choices=functional.__all__,
            help="an op to benchmark (repeatable; default: every op)",
        )
    parser.add_argument(
        "--sweep",
        choices=("quick", "full"),
        default="quick" if cli else "full",
        help="quick: small sizes, forward and forward+backward, no torch.compile; full: the "
        "device's sizes, dims and dtypes in every mode (default: %(default)s)",
    )
    parser.add_argument("--sizes", type=_ints, help="swept sizes, e.g. 256,1024 (N or B)")
    parser.add_argument("--dims", type=_ints, help="second sizes, e.g. 128,512 (D, K or a side)")
    parser.add_argument("--dtype", type=_names(tuple(DTYPES)), help="e.g. float32,bfloat16")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when present")
    parser.add_argument("--modes", type=_names(MODES), help="e.g. forward,forward+backward")
    parser.add_argument("--variants", type=_names(None), help="only these variants of an op")
    parser.add_argument(
        "--providers",
        type=_names(None),
        help="only these: reference, reference+compile, cpp, cuda, triton or a peer's name",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="include the reference under torch.compile (default: in the full sweep only)",
    )
    results = str(_results.RESULTS_DIR) + os.sep
    parser.add_argument(
        "--out",
        default=None if cli else results,
        help="append the rows to this CSV file, or to <folder>/<device>.csv when it is a "
        f"folder (default: {'none, print only' if cli else results})",
    )
    parser.add_argument("--no-csv", action="store_true", help="write no CSV")
    parser.add_argument(
        "--min-time", type=float, help="seconds of timed runs per mode (quick 0.1, full 0.2)"
    )
    parser.add_argument(
        "--max-ms",
        type=float,
        help="stop growing a provider's size once a mode's median exceeds this "
        "(default: 1000 on CPU, 500 on CUDA)",
    )
    parser.add_argument("--time-budget", type=float, help="seconds after which no case starts")
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=600.0,
        help="CPU: seconds before a case's process is killed (%(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def plan_from_args(args: argparse.Namespace, device: torch.device) -> Plan:
    return Plan(
        device=device,
        sweep=args.sweep,
        sizes=args.sizes,
        dims=args.dims,
        dtypes=args.dtype,
        modes=args.modes,
        variants=args.variants,
        providers=args.providers,
        compile=args.sweep == "full" if args.compile is None else args.compile,
        min_time=args.min_time or (0.2 if args.sweep == "full" else 0.1),
        max_ms=args.max_ms or (500.0 if device.type == "cuda" else 1000.0),
        time_budget=args.time_budget,
        case_timeout=args.case_timeout,
    )


def execute(benches: Sequence[OpBench], args: argparse.Namespace) -> int:
    """Run parsed options; exit status 1 when one of this package's providers raised an error."""
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is present", file=sys.stderr)
        return 2
    device = torch.device(name)
    csv = None if args.no_csv or not args.out else _results.csv_path(args.out, device)
    rows = run(benches, plan_from_args(args, device), csv, args.quiet)
    own = (COMPILED, *_dispatch.BACKENDS)  # a peer's error (say, a dtype it lacks) is a note
    return 1 if any(row["status"] == "error" and row["provider"] in own for row in rows) else 0


def main(bench: OpBench, argv: Sequence[str] | None = None) -> int:
    """The command line of one bench_<op>.py: its full sweep by default."""
    parser = argparse.ArgumentParser(
        prog=f"bench_{bench.op}.py",
        description=load_module(bench.op).__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, cli=False)
    return execute([bench], parser.parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """``amc-kernels bench``: the chosen ops (every op by default)."""
    return execute([load(op) for op in args.op or functional.__all__], args)
