"""A run (docs/design.md#6-benchmarks): what it measures (:class:`Plan`), its cases, their order,
the stopping rules, the CSV rows, the progress lines and the notes on what was not measured.

The providers of a case: ``reference`` (eager), ``reference+compile`` (the reference under
``torch.compile(dynamic=True)``), every other backend that the dispatcher accepts for the device
and dtype, and the op's peers when their package is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from amc_kernels import _dispatch

from . import _results
from ._harness import DTYPES, MODES, OpBench, Variant
from ._isolation import ForkedCases, in_process
from ._measure import COMPILED, REFERENCE, Case, ModeResult, Outcome
from ._roofline import Roofline, measure_roofline

QUICK_MODES = ("forward", "forward+backward")
#: Failures after which a provider is not run at larger sizes.
STOPPING = ("refused", "oom", "killed", "timeout", "error")


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


def _budget_rows(
    bench: OpBench, case: Case, budget: float, run_info: dict[str, str], roofline: Roofline
) -> list[dict[str, object]]:
    """Rows of status "budget" for the first case of a provider's line that the time budget
    stopped: the table then shows where that provider stopped and why."""
    note = f"not run: the time budget of {budget:.0f} s was spent"
    results = [ModeResult(mode, "budget", note=note) for mode in case.modes]
    return [_row(bench, case, "", result, run_info, roofline) for result in results]


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
    started, over_budget, budgeted = time.monotonic(), 0, set()
    for index, (bench, case) in enumerate(todo, 1):
        if case.line in stopped:
            continue
        if plan.time_budget is not None and time.monotonic() - started > plan.time_budget:
            over_budget += 1
            notes.add(f"not run: the time budget of {plan.time_budget:.0f} s was spent", case.op)
            if case.line not in budgeted:  # one row per line (table only) says where it stopped
                budgeted.add(case.line)
                rows += _budget_rows(bench, case, plan.time_budget, run_info, roofline)
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
