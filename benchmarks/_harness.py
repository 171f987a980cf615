"""What a ``bench_<op>.py`` declares (docs/design.md#6-benchmarks): one op (:class:`OpBench`), its
variants, the sizes it sweeps, how to draw fresh random inputs, its analytic FLOPs and bytes, and
its peers.

The rest of the harness turns a declaration into measurements: ``_plan`` makes the cases, one
per (variant, size, dim, dtype, provider), and runs them; ``_measure`` measures one case
(``_timing``, ``_memory``) in the process that ``_isolation`` picks; ``_roofline`` measures the
device's peaks; ``_cli`` holds the command lines.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

MODES = ("forward", "backward", "forward+backward")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


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


def gram_work(
    rows: int, d: int, forward_bytes: int, backward_bytes: int, mode: str
) -> tuple[float, float]:
    """(FLOPs, bytes) of a mode of an op whose work is a rows×rows Gram GEMM over `d`: 2·rows²·d
    FLOPs in the forward, twice that (two gradient GEMMs) in the backward."""
    gemm = 2.0 * rows * rows * d
    return by_mode((gemm, float(forward_bytes)), (2 * gemm, float(backward_bytes)), mode)


def embedding_bench(
    op: str,
    variants: tuple[Variant, ...],
    work: Work,
    quick_sizes: tuple[int, ...] = (256, 1024),
    cpu_sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096),
) -> OpBench:
    """The benchmark of an op on N embeddings of size D: D in {128, 512}, N from 256 (to 65536
    on CUDA, in bfloat16 and float32); on CPU, reference+compile runs at D = 128 only."""
    return OpBench(
        op=op,
        n_name="N",
        d_name="D",
        variants=variants,
        work=work,
        quick=Sweep(quick_sizes, (128,)),
        cpu=Sweep(cpu_sizes, (128, 512), compile_dims=(128,)),
        cuda=Sweep((256, 1024, 4096, 16384, 32768, 65536), (128, 512), ("bfloat16", "float32")),
    )


def load_module(op: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.bench_{op}")


def load(op: str) -> OpBench:
    return load_module(op).BENCH
