"""The ``amc-kernels`` command line (also ``python -m amc_kernels``).

info   versions, the build of amc_kernels._C, and the usable backends per op and device
check  every usable backend against the reference on this machine's devices (exit 1 on failure;
       --json for a machine-readable report)
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
from dataclasses import asdict, dataclass

import torch

from . import _dispatch, _extension, recipes, testing
from ._spec import OPS
from ._version import __version__

CHECK_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
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
        return f"unavailable: {_extension.load_error()}"
    cuda = (
        f"CUDA {info['cuda_version']} kernels for {info['arch_list']}"
        if info["cuda"]
        else "no CUDA kernels"
    )
    openmp = "OpenMP" if info["openmp"] else "no OpenMP"
    return f"built against torch {info['torch']}, {cuda}, {openmp}, gcc {info['compiler']}"


def describe_record() -> str:
    record = _extension.read_record()
    if record is None:
        return f"none ({_extension.RECORD_NAME} is written by the build beside _C)"
    cuda = f"CUDA {record['torch_cuda']} kernels" if record["cuda_kernels"] else "CPU kernels"
    return f"amc-kernels {record['amc_kernels']}: {cuda} for torch {record['torch_release']}"


def cmd_info(args: argparse.Namespace) -> int:
    print(f"amc-kernels {__version__}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), triton {triton_version()}"
    )
    print(f"amc_kernels._C: {describe_extension()}")
    print(f"build record: {describe_record()}")
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


@dataclass
class CheckResult:
    """One row of `amc-kernels check`: a test of one op on one device by one backend."""

    op: str
    device: str
    backend: str
    test: str
    status: str  # PASS, FAIL or ERROR
    dtype: str | None = None
    max_error: float | None = None
    bound: float | None = None
    error: str | None = None  # the exception, for ERROR

    def cells(self) -> list[str]:
        if self.error is not None:
            shown = self.error[:60]
        elif self.bound is None:
            shown = f"{self.max_error:.2e}"
        else:
            shown = f"{self.max_error:.2e} (bound {self.bound:.2e})"
        return [self.op, self.device, self.backend, self.test, self.status, shown]


def measured(
    op: str, device: torch.device, backend: str, test: str, error: float, bound: float
) -> CheckResult:
    """A float64 test whose error must stay within `bound`."""
    status = "PASS" if error <= bound else "FAIL"
    return CheckResult(op, str(device), backend, test, status, "float64", error, bound)


def check_closed_forms(device: torch.device) -> list[CheckResult]:
    rows = []
    for case in testing.closed_form_cases():
        got, expected = case.run(device)
        error = (got.double() - expected).abs().max().item()
        bound = 1e-12 * (1 + expected.abs().max().item())
        rows.append(
            measured(case.op, device, "reference", f"closed form: {case.name}", error, bound)
        )
    return rows


def check_extension(device: torch.device) -> list[CheckResult]:
    """The shared online log-sum-exp through amc_kernels._C's self-check op."""
    info = _extension.build_info()
    if info is None or (device.type == "cuda" and not info["cuda"]):
        return []
    x = torch.randn(37, 1000, dtype=torch.float64, device=device) * 30
    got = torch.ops.amc_kernels._selfcheck_row_logsumexp(x)
    error = (got - torch.logsumexp(x, dim=1)).abs().max().item()
    backend = "cuda" if device.type == "cuda" else "cpp"
    return [measured("_C self-check", device, backend, "online log-sum-exp", error, 3e-8)]


def check_op(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> CheckResult:
    test, name = f"vs reference, {dtype}", str(dtype).removeprefix("torch.")
    arguments = testing.make_inputs(op, device, dtype)
    try:
        ok, error, bound = testing.compare_backend(op, backend, arguments)
    except Exception as failure:  # report, keep checking the rest
        return CheckResult(op, str(device), backend, test, "ERROR", name, error=repr(failure))
    status = "PASS" if ok else "FAIL"
    return CheckResult(op, str(device), backend, test, status, name, error, bound)


def check_backends(device: torch.device) -> tuple[list[CheckResult], list[dict]]:
    """Every backend but the reference, on every op and dtype of the device; and the
    (op, device, backend) triples that cannot run, with the reason."""
    rows, unavailable = [], []
    for op in OPS:
        for backend in _dispatch.BACKENDS[1:]:
            refused = _dispatch.refusals(backend, generic_call(op, device))
            if refused:
                unavailable.append(
                    {
                        "op": op,
                        "device": str(device),
                        "backend": backend,
                        "reason": "; ".join(refused),
                    }
                )
                continue
            for dtype in CHECK_DTYPES.get(device.type, (torch.float32,)):
                rows.append(check_op(op, backend, device, dtype))
    return rows, unavailable


def run_checks() -> tuple[list[CheckResult], list[dict]]:
    rows, unavailable = [], []
    for device in devices():
        rows += check_closed_forms(device) + check_extension(device)
        backend_rows, backend_unavailable = check_backends(device)
        rows += backend_rows
        unavailable += backend_unavailable
    return rows, unavailable


def check_report(rows: list[CheckResult], unavailable: list[dict]) -> dict:
    """The --json document: the versions, each result and each unavailable backend."""
    failed = sum(row.status != "PASS" for row in rows)
    return {
        "amc_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": describe_extension(),
        "build_record": _extension.read_record(),
        "devices": [str(d) for d in devices()],
        "passed": len(rows) - failed,
        "failed": failed,
        "ok": failed == 0,
        "results": [asdict(row) for row in rows],
        "unavailable": unavailable,
    }


def cmd_check(args: argparse.Namespace) -> int:
    rows, unavailable = run_checks()
    failures = sum(row.status != "PASS" for row in rows)
    if args.json:
        print(json.dumps(check_report(rows, unavailable), indent=2))
        return 1 if failures else 0
    print_table(
        ["op", "device", "backend", "test", "result", "max error"], [r.cells() for r in rows]
    )
    if unavailable and args.verbose:
        print("\nnot checked (backend unavailable):")
        print_table(["op", "device", "backend", "reason"], [list(u.values()) for u in unavailable])
    elif unavailable:
        print(
            f"\n{len(unavailable)} op/backend pairs unavailable here (see `amc-kernels info`, "
            f"or -v)"
        )
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
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (versions, every result, unavailable backends) instead",
    )
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
