"""Every Triton kernel compiles for an H100 (sm_90) in the launchers' GPU configurations.

No GPU needed: benchmarks/triton_aot_check.py runs the launchers on meta tensors, records the
launches they would make (so a changed launcher config changes what compiles here) and compiles
each through Triton's frontend, LLVM and ptxas for GPUTarget("cuda", 90, 32), failing on errors,
on more than 227 KiB of shared memory and on more registers than an SM has. It runs in a
subprocess without TRITON_INTERPRET, which replaces the jit functions at import. This test
compiles the subset (each kernel once per dtype); the exhaustive sweep of every distinct config
is `python -m benchmarks.triton_aot_check`, for the GPU suite and developers.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import amc_kernels.triton_kernels as triton_kernels

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("fp32", "fp16", "bf16", "fp64")


def _kernel_names() -> set[str]:
    """Names of the launchable kernels (`*_kernel` jit functions) of every triton module."""
    names = set()
    for info in pkgutil.iter_modules(triton_kernels.__path__):
        module = importlib.import_module(f"{triton_kernels.__name__}.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and hasattr(value, "arg_names"):
                names.add(name)
    return names


@pytest.mark.triton
def test_every_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.triton_aot_check", "--subset", "--json", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    results = json.loads(out.read_text())
    assert all(r["error"] is None for r in results)
    compiled = {(r["kernel"], r["dtype"]) for r in results}
    missing = {(k, d) for k in _kernel_names() for d in DTYPES} - compiled
    assert not missing, f"kernels never launched by the compile cases: {sorted(missing)}"
