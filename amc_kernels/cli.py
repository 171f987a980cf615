"""The ``amc-kernels`` command line (also ``python -m amc_kernels``).

info   versions, the build of amc_kernels._C, and the usable backends per op and device
check  every usable backend against the reference on this machine's devices (exit 1 on failure)
bench  time and peak memory of every op, backend and peer (amc_kernels.benchmarks)
train  one training recipe: metrics JSON, checkpoint and Grad-CAM figure under --out
compare  several recipes on the same data and seed: a side-by-side table and one figure

The commands are described in docs/design.md#29-command-line and docs/design.md#6-benchmarks.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence

import torch

from . import _dispatch, _extension, recipes, testing
from ._spec import OPS
from ._version import __version__

CHECK_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return found


def generic_call(op: str, device: torch.device) -> _dispatch.Call:
    return _dispatch.Call(op, device, torch.float32, ())


def print_table(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for line in (header, ["-" * w for w in widths], *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def describe_extension() -> str:
    info = _extension.build_info()
    if info is None:
        return f"not built: {_extension.load_error()}"
    cuda = (
        f"CUDA {info['cuda_version']} kernels for {info['arch_list']}"
        if info["cuda"]
        else "no CUDA kernels"
    )
    openmp = "OpenMP" if info["openmp"] else "no OpenMP"
    return f"built against torch {info['torch']}, {cuda}, {openmp}, gcc {info['compiler']}"


def cmd_info(args: argparse.Namespace) -> int:
    print(f"amc-kernels {__version__}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), triton {triton_version()}"
    )
    print(f"amc_kernels._C: {describe_extension()}")
    names = [
        f"{d} ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else str(d) for d in devices()
    ]
    print(f"devices: {', '.join(names)}")
    print()
    reasons: dict[str, int] = {}
    rows = []
    for op in OPS:
        for device in devices():
            call = generic_call(op, device)
            cells = []
            for backend in _dispatch.BACKENDS:
                refused = _dispatch.refusals(backend, call)
                if refused:
                    key = "; ".join(refused)
                    cells.append(f"no [{reasons.setdefault(key, len(reasons) + 1)}]")
                else:
                    cells.append("yes")
            rows.append([op, str(device), *cells, _dispatch.select(call, "auto").backend])
    print_table(["op", "device", *_dispatch.BACKENDS, "auto"], rows)
    for reason, number in reasons.items():
        print(f"[{number}] {reason}")
    return 0


def check_closed_forms(device: torch.device) -> list[list[str]]:
    rows = []
    for case in testing.closed_form_cases():
        got, expected = case.run(device)
        error = (got.double() - expected).abs().max().item()
        status = "PASS" if error <= 1e-12 * (1 + expected.abs().max().item()) else "FAIL"
        rows.append(
            [case.op, str(device), "reference", f"closed form: {case.name}", status, f"{error:.2e}"]
        )
    return rows


def check_extension(device: torch.device) -> list[list[str]]:
    """The shared online log-sum-exp through amc_kernels._C's self-check op."""
    info = _extension.build_info()
    if info is None or (device.type == "cuda" and not info["cuda"]):
        return []
    x = torch.randn(37, 1000, dtype=torch.float64, device=device) * 30
    got = torch.ops.amc_kernels._selfcheck_row_logsumexp(x)
    error = (got - torch.logsumexp(x, dim=1)).abs().max().item()
    status = "PASS" if error <= 1e-12 * 30 * 1000 else "FAIL"
    return [
        [
            "_C self-check",
            str(device),
            "cuda" if device.type == "cuda" else "cpp",
            "online log-sum-exp",
            status,
            f"{error:.2e}",
        ]
    ]


def check_backends(device: torch.device) -> tuple[list[list[str]], list[list[str]]]:
    rows, skipped = [], []
    for op in OPS:
        for backend in _dispatch.BACKENDS[1:]:
            refused = _dispatch.refusals(backend, generic_call(op, device))
            if refused:
                skipped.append([op, str(device), backend, "; ".join(refused)])
                continue
            for dtype in CHECK_DTYPES.get(device.type, (torch.float32,)):
                arguments = testing.make_inputs(op, device, dtype)
                try:
                    ok, error, bound = testing.compare_backend(op, backend, arguments)
                except Exception as failure:  # report, keep checking the rest
                    rows.append([op, str(device), backend, str(dtype), "ERROR", repr(failure)[:60]])
                    continue
                rows.append(
                    [
                        op,
                        str(device),
                        backend,
                        f"vs reference, {dtype}",
                        "PASS" if ok else "FAIL",
                        f"{error:.2e} (bound {bound:.2e})",
                    ]
                )
    return rows, skipped


def cmd_check(args: argparse.Namespace) -> int:
    rows, skipped = [], []
    for device in devices():
        rows += check_closed_forms(device) + check_extension(device)
        backend_rows, backend_skipped = check_backends(device)
        rows += backend_rows
        skipped += backend_skipped
    print_table(["op", "device", "backend", "test", "result", "max error"], rows)
    if skipped and args.verbose:
        print("\nnot checked (backend unavailable):")
        print_table(["op", "device", "backend", "reason"], skipped)
    elif skipped:
        print(f"\n{len(skipped)} op/backend pairs unavailable here (see `amc-kernels info`, or -v)")
    failures = sum(row[4] != "PASS" for row in rows)
    print(f"\n{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .recipes.train import train

    try:
        result = train(recipes.config.config_from_args(args))
    except (FileNotFoundError, ImportError) as error:  # missing data or optional packages
        print(f"amc-kernels train: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.metrics, indent=2))
    print(f"wrote {', '.join(result.files.values())}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .recipes.compare import compare

    try:
        compare(recipes.config.config_from_args(args), args.losses)
    except (FileNotFoundError, ImportError) as error:
        print(f"amc-kernels compare: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .benchmarks import _cli as bench_cli  # here: the harness imports this module's helpers

    parser = argparse.ArgumentParser(
        prog="amc-kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"amc-kernels {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, build flags and usable backends").set_defaults(
        run=cmd_info
    )
    check = commands.add_parser("check", help="every usable backend against the reference")
    check.add_argument("-v", "--verbose", action="store_true", help="list unavailable backends")
    check.set_defaults(run=cmd_check)
    bench = commands.add_parser(
        "bench",
        help="time and peak memory per op, backend and peer",
        description="Microbenchmarks (docs/design.md#6-benchmarks): a quick sweep of every op "
        "by default.",
    )
    bench_cli.add_arguments(bench, cli=True)
    bench.set_defaults(run=bench_cli.run_cli)
    train = commands.add_parser("train", help="one training recipe (ce, amc, supcon, excon, cgc)")
    recipes.config.add_arguments(train, compare=False)
    train.set_defaults(run=cmd_train)
    compare = commands.add_parser("compare", help="several recipes side by side, with a figure")
    recipes.config.add_arguments(compare, compare=True)
    compare.set_defaults(run=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
