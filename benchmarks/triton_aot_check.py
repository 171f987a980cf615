"""Ahead-of-time compile every Triton kernel for an H100 (sm_90), in the launchers' GPU configs.

No GPU is needed: each op's launchers run on meta tensors inside ``record_launches()``, which
records every (kernel, grid, arguments, constexprs, launch options) instead of launching. Each
recorded launch is specialised as ``JITFunction.run`` would specialise it (ints equal to 1 become
constexprs, divisibility-by-16 attributes) and compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))``: Triton's frontend, its MLIR passes, LLVM and ptxas. A
config fails when compilation raises, when its shared memory exceeds 227 KiB or when its
registers exceed an SM's 64 Ki for the block.

Prints one row per distinct compiled kernel: op, kernel, dtype, constexprs and launch options,
registers, spill stores, shared bytes and compile seconds. ``--subset`` (the CI test,
python_tests/test_triton_compile.py) compiles each kernel once per dtype and tile/warp/stage
config, whatever its other constexprs; without it, every distinct specialisation of every case.
Run without TRITON_INTERPRET (the interpreter replaces the jit functions):

    python -m benchmarks.triton_aot_check [--subset] [--op gradcam] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch

TARGET_ARCH = 90
MAX_SHARED = 227 * 1024  # bytes of shared memory one block may use on sm_90
MAX_REGS = 64 * 1024  # 32-bit registers of one SM, shared by the block's threads
DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
DIMS = (16, 128, 256, 1024)  # feature widths: every tile shape of pairwise_tiles, SINGLE or not


@dataclass
class Result:
    op: str
    kernel: str
    dtype: str
    config: str
    regs: int | None
    spills: int | None
    shared: int | None
    seconds: float
    error: str | None


def _t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _raw(op) -> Callable:
    """The Python function behind a torch.library.triton_op (it calls launch() directly)."""
    return op._init_fn


def _angular_distance(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import angular_distance as m

    for d in DIMS:
        for symmetric in (True, False):
            x = _t(512, d, dtype=dt)
            y = None if symmetric else _t(384, d, dtype=dt)
            _raw(m.angular_distance_fwd)(x, y)
            grad = _t(512, 512 if symmetric else 384, dtype=dt)
            _raw(m.angular_distance_bwd)(grad, x, y, False, [True, True])


def _amc_loss(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import amc_loss as m

    labels = _t(512, dtype=torch.int64)
    for d in DIMS:
        for pairs, reduction in (("all", "mean"), ("all", "none"), ("halves", "mean")):
            x = _t(512, d, dtype=dt)
            loss = _raw(m.amc_loss_fwd)(x, labels, 0.5, pairs, reduction)
            args = (0.5, pairs, reduction, False, [True])
            _raw(m.amc_loss_bwd)(torch.empty_like(loss), x, labels, *args)


def _supcon_loss(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import supcon_loss as m

    for d in DIMS:
        for labels in (_t(256, dtype=torch.int64), None):
            x = _t(256, 2, d, dtype=dt)
            opts = (0.1, 0.07, "all", True, "mean")
            loss, lse = _raw(m.supcon_loss_fwd)(x, labels, None, *opts)
            grad = torch.empty_like(loss)
            _raw(m.supcon_loss_bwd)(grad, x, labels, None, lse, *opts, [True, False])


# output_mask of the backward ops of two inputs: both first (the --subset configs), then each
# one alone (their own constexpr specialisations, in the full sweep).
_MASKS = ([True, True], [True, False], [False, True])

# Grad-CAM layers: ResNet-50's last (small maps, many channels: channels split over programs)
# and an early one (large maps: no split).
_MAP_SHAPES = ((32, 2048, 7, 7), (32, 256, 56, 56))


def _gradcam(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import gradcam as m

    for shape in _MAP_SHAPES:
        for weighting in ("mean", "elementwise"):
            for relu in (True, False):
                for normalize in ("none", "max", "minmax", "sum"):
                    for size in ([], [224, 224]):
                        a, g = _t(*shape, dtype=dt), _t(*shape, dtype=dt)
                        out, raw, alpha = _raw(m.gradcam_fwd)(
                            a, g, weighting, relu, normalize, size
                        )
                        args = (weighting, relu, normalize, size)
                        for mask in _MASKS:
                            grad = torch.empty_like(out)
                            _raw(m.gradcam_bwd)(grad, a, g, raw, alpha, *args, mask)


def _class_activation_map(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import class_activation_map as m

    for shape in _MAP_SHAPES:
        a, weight = _t(*shape, dtype=dt), _t(1000, shape[1], dtype=dt)
        targets = _t(shape[0], dtype=torch.int64)
        cam = _raw(m.class_activation_map_fwd)(a, weight, targets)
        for mask in _MASKS:
            _raw(m.class_activation_map_bwd)(torch.empty_like(cam), a, weight, targets, mask)


def _saliency_mask(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import saliency_mask as m

    for top_fraction in (-1.0, 0.15):
        _raw(m.saliency_mask_fwd)(_t(32, 3, 224, 224, dtype=dt), _t(32, 7, 7, dtype=dt), 0.5,
                                  top_fraction, 0.0)  # fmt: skip


def _cgc_loss(dt: torch.dtype) -> None:
    from amc_kernels.triton_kernels import cgc_loss as m

    for side in (7, 14, 28, 56):  # sandwich tiles 16, 16, 32 and 64 (8 warps)
        orig, aug = _t(64, side, side, dtype=dt), _t(64, side, side, dtype=dt)
        crops, flips = _t(64, 4, dtype=torch.int64), _t(64, dtype=torch.bool)
        loss = _raw(m.cgc_loss_fwd)(orig, aug, crops, flips, None, 0.5, 224)
        tau = _t(dtype=torch.float32)  # a learnable temperature: ∂L/∂τ too
        for mask in _MASKS:
            _raw(m.cgc_loss_bwd)(
                torch.empty_like(loss), orig, aug, crops, flips, tau, 0.0, 224, [*mask, True]
            )


CASES: dict[str, Callable[[torch.dtype], None]] = {
    "angular_distance": _angular_distance,
    "amc_loss": _amc_loss,
    "supcon_loss": _supcon_loss,
    "gradcam": _gradcam,
    "class_activation_map": _class_activation_map,
    "saliency_mask": _saliency_mask,
    "cgc_loss": _cgc_loss,
}


def _specialise(launch, backend):
    """(ASTSource, options) as JITFunction.run builds them for these arguments (Triton 3.6-3.8)."""
    from triton._utils import find_paths_if, get_iterable_path
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*launch.args, **launch.kwargs)
    options = backend.parse_options(launch.kwargs)
    types = [s[0] for s in specialization]
    signature = dict(zip(kernel.arg_names, types, strict=True))
    values = list(bound.values())
    paths = find_paths_if(types, lambda _, t: t == "constexpr")
    constexprs = {path: get_iterable_path(values, path) for path in paths}
    attr_values = ["" if s[0] == "constexpr" else s[1] for s in specialization]
    paths = find_paths_if(attr_values, lambda _, a: isinstance(a, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attr_values, path)) for path in paths}
    return ASTSource(kernel, signature, constexprs, attrs), options


def _tiles(launch) -> tuple:
    """The launch's tile sizes, warps and stages: what sets its registers and shared memory."""
    keys = sorted(k for k in launch.kwargs if k.startswith("BLOCK") or k.startswith("num_"))
    return tuple((k, launch.kwargs[k]) for k in keys)


def _config(launch) -> str:
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in launch.kwargs.items())


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores")


def _compile(op: str, dtype: str, launch, source, options, target) -> Result:
    import triton

    config = _config(launch)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=target, options=options.__dict__)
    except Exception as exc:  # reported per config; the run fails at the end
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        name = launch.kernel.fn.__name__
        return Result(op, name, dtype, config, None, None, None, time.perf_counter() - start,
                      message)  # fmt: skip
    seconds = time.perf_counter() - start
    text = log.getvalue()
    regs = int(m.group(1)) if (m := _PTXAS.search(text)) else None
    spills = int(m.group(1)) if (m := _SPILLS.search(text)) else None
    shared = compiled.metadata.shared
    error = None
    if shared > MAX_SHARED:
        error = f"needs {shared} bytes of shared memory, sm_90 allows {MAX_SHARED}"
    elif regs is not None and regs * 32 * options.num_warps > MAX_REGS:
        error = f"{regs} registers × {options.num_warps} warps exceed an SM's {MAX_REGS}"
    return Result(op, launch.kernel.fn.__name__, dtype, config, regs, spills, shared, seconds,
                  error)  # fmt: skip


def compile_case(op: str, dtype: str, subset: bool) -> list[Result]:
    """Compile the launches recorded from `op`'s cases in `dtype`; one Result per distinct one."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    from amc_kernels.triton_kernels._common import record_launches

    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report: registers and spills
    # A fresh cache per case: a hit (a kernel shared by ops) would run no ptxas, report nothing.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(dir=os.environ.get("TRITON_CACHE_DIR"))
    target = GPUTarget("cuda", TARGET_ARCH, 32)
    backend = make_backend(target)
    with record_launches() as launches:
        CASES[op](DTYPES[dtype])
    seen: set[tuple] = set()
    results = []
    for launch in launches:
        source, options = _specialise(launch, backend)
        name = launch.kernel.fn.__name__
        key = (name, _tiles(launch)) if subset else (source.hash(), options.hash())
        if key not in seen:
            seen.add(key)
            results.append(_compile(op, dtype, launch, source, options, target))
    return results


_HEADER = f"{'op':<20} {'kernel':<26} {'dtype':<5} {'regs':>5} {'spill':>6} {'shared':>7} {'s':>5}"


def _row(r: Result) -> str:
    def num(v: int | None) -> str:
        return "?" if v is None else str(v)

    head = f"{r.op:<20} {r.kernel:<26} {r.dtype:<5} {num(r.regs):>5} {num(r.spills):>6} "
    tail = f"{num(r.shared):>7} {r.seconds:>5.1f}  {r.config}"
    return head + tail + (f"\n    FAILED: {r.error}" if r.error else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="default: all")
    parser.add_argument(
        "--subset", action="store_true", help="each kernel once per dtype and tile config"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compilers")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip() == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels to compile")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # fresh caches: every config really compiles
        print(_HEADER, flush=True)
        start = time.perf_counter()
        cases = list(itertools.product(args.op or list(CASES), args.dtype or list(DTYPES)))
        results = []
        # fork: the workers inherit the imports and the cache folder; nothing touches a GPU.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max(1, args.jobs), mp_context=context) as pool:
            chunks = pool.map(compile_case, *zip(*cases, strict=True), [args.subset] * len(cases))
            for chunk in chunks:
                for result in chunk:
                    print(_row(result), flush=True)
                results += chunk
    failures = [r for r in results if r.error]
    print(f"{len(results)} compiled in {time.perf_counter() - start:.0f} s, {len(failures)} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
