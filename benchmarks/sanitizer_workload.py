"""The CUDA kernels' workload for compute-sanitizer (benchmarks/gpu_suite.sh runs it under
memcheck and racecheck):

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitizer_workload.py

Every sample variant of every op (amc_kernels.testing.variants: more than one tile, partial
tiles, every option), on the cuda backend, forward and backward, in each dtype asked for. Run it
with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that each tensor is its own allocation and memcheck sees
an access past its end. Exit status 1 when a call raises; the sanitizer's --error-exitcode
reports what it found.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from amc_kernels import testing
from amc_kernels._spec import OPS

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def run_op(op: str, dtype: torch.dtype, device: str, backend: str) -> list[str]:
    """Each variant of `op` once, forward and backward; the failures, as lines."""
    failures = []
    for sample in testing.variants(op):
        arguments = testing.make_inputs(op, device, dtype, variant_name=sample.name)
        try:
            testing.run_with_grads(op, backend, arguments)
        except Exception as error:  # report every failing call, not only the first
            failures.append(f"{op}/{sample.name} {dtype}: {error!r}"[:300])
    if device == "cuda":
        torch.cuda.synchronize()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the workload")
    parser.add_argument("--backend", default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("sanitizer_workload.py needs a CUDA GPU (or --device cpu --backend cpp)")
    failures = []
    for op in args.ops.split(","):
        for name in args.dtypes.split(","):
            started = time.perf_counter()
            failed = run_op(op, DTYPES[name], args.device, args.backend)
            failures += failed
            took = time.perf_counter() - started
            print(
                f"{op:<22} {name:<9} {len(testing.variants(op)):>3} variants "
                f"{len(failed):>3} failed  {took:6.1f} s",
                flush=True,
            )
    for line in failures:
        print("FAILED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
