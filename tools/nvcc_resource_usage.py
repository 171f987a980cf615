"""nvcc with ptxas's resource report kept: `python nvcc_resource_usage.py NVCC... -- ARGS...`.

setup.py points torch's PYTORCH_NVCC at this script for CUDA builds. It runs the real nvcc (the
words before `--`, e.g. `/usr/local/cuda/bin/nvcc` or `ccache nvcc`) with ARGS plus
`--resource-usage`, passes its output on without ptxas's report lines, and writes the
per-kernel report of the object `-o OBJ` to `OBJ.resources.json`:

    [{"kernel": mangled name, "arch": "sm_90", "registers": 40, "stack_frame": 0,
      "spill_stores": 0, "spill_loads": 0}, ...]

setup.py gathers these files into amc_kernels/_cuda_resources.json next to _C
(docs/design.md#8-build-and-wheels); python_tests/test_build.py checks them.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def parse(report: str) -> list[dict]:
    """The kernels in ptxas -v output, in order: name, arch, registers, frame and spill bytes."""
    kernels: list[dict] = []
    for line in report.splitlines():
        if match := ENTRY.search(line):
            kernels.append({"kernel": match[1], "arch": match[2]})
        elif kernels and (match := FRAME.search(line)):
            frame, stores, loads = map(int, match.groups())
            kernels[-1].update(stack_frame=frame, spill_stores=stores, spill_loads=loads)
        elif kernels and (match := REGISTERS.search(line)):
            kernels[-1]["registers"] = int(match[1])
    return kernels


def is_report(line: str) -> bool:
    return line.startswith("ptxas info") or FRAME.search(line) is not None


def object_path(args: list[str]) -> Path | None:
    for flag, value in itertools.pairwise(args):
        if flag == "-o":
            return Path(value)
    return None


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.exit("usage: nvcc_resource_usage.py NVCC... -- ARGS...")
    split = argv.index("--")
    nvcc, args = argv[:split], argv[split + 1 :]
    result = subprocess.run(
        [*nvcc, *args, "--resource-usage"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sys.stdout.write(
        "".join(line for line in result.stdout.splitlines(True) if not is_report(line))
    )
    target = object_path(args)
    if result.returncode == 0 and target is not None:
        report = Path(f"{target}.resources.json")
        report.write_text(json.dumps(parse(result.stdout), indent=1) + "\n")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
