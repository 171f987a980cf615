"""The command lines of the benchmarks (docs/design.md#6-benchmarks): one ``bench_<op>.py`` (its
full sweep by default) and ``amc-kernels bench`` (a quick sweep of every op by default), with their
options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import torch

from amc_kernels import _dispatch, functional

from . import _results
from ._harness import DTYPES, MODES, OpBench, load, load_module
from ._measure import COMPILED, REFERENCE
from ._plan import Plan, run


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


def provider_names(benches: Sequence[OpBench]) -> tuple[str, ...]:
    """Every provider a run of `benches` can have: the reference, compiled or not, the other
    backends and the ops' peers."""
    peers = dict.fromkeys(p.name for bench in benches for v in bench.variants for p in v.peers)
    return (REFERENCE, COMPILED, *_dispatch.BACKENDS[1:], *peers)


def add_arguments(
    parser: argparse.ArgumentParser, *, cli: bool, benches: Sequence[OpBench] | None = None
) -> None:
    """The options of ``amc-kernels bench`` (cli=True, which adds --op) and of bench_<op>.py
    (`benches`: the ops whose peers --providers accepts; None: every op)."""
    if benches is None:
        benches = [load(op) for op in functional.__all__]
    names = provider_names(benches)
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
        type=_names(names),
        help=f"only these, comma-separated, from: {', '.join(names)}",
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
    add_arguments(parser, cli=False, benches=[bench])
    return execute([bench], parser.parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """``amc-kernels bench``: the chosen ops (every op by default)."""
    return execute([load(op) for op in args.op or functional.__all__], args)
