"""Backend choice for every op (docs/design.md#3-backends-and-dispatch).

Precedence: an explicit ``backend=`` argument, then :func:`use_backend`, then the
``AMC_KERNELS_BACKEND`` environment variable, then the device's automatic priority list.
``"auto"`` at any level means the automatic choice from there on. A named backend that cannot
serve the call raises :class:`BackendUnavailableError` listing every candidate and its reasons;
the automatic choice falls back quietly to the next candidate. Only metadata (device type,
dtype, shapes, options) is read: choosing never synchronises with the device.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("reference", "cpp", "cuda", "triton")
BACKEND_CHOICES = (None, "auto", *BACKENDS)
ENV_BACKEND = "AMC_KERNELS_BACKEND"
ENV_LOG = "AMC_KERNELS_LOG_DISPATCH"

#: Automatic order per device type. On GPUs Triton comes first until a GPU run has measured the
#: CUDA kernels (issue 12: the order is then set per op from measured speed); Triton on CPU is
#: never chosen automatically.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpp", "reference"),
    # meta tensors (shape inference, no data): every backend infers the same shapes
    "meta": ("cpp", "triton", "reference"),
}
FALLBACK_ORDER = ("reference",)

logger = logging.getLogger("amc_kernels.dispatch")


class BackendUnavailableError(ValueError):
    """A backend named by the user cannot run this call; the message gives every reason."""


@dataclass(frozen=True)
class Call:
    """What dispatch may look at: metadata only, never tensor values."""

    op: str
    device: torch.device
    dtype: torch.dtype
    shapes: tuple[tuple[int, ...], ...]
    options: dict[str, Any] = field(default_factory=dict)


Refusals = Callable[[Call], list[str]]


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    fn: Callable[..., Any]  # called with every argument of the op's spec by keyword
    refusals: Refusals  # the reasons it cannot run a call; empty when it can


#: For each op and backend, the module that implements it, imported on first use. The module
#: defines a function named after the op and may define ``refusals(call) -> list[str]``. The
#: cuda backend shares cpp's module: both call torch.ops.amc_kernels.<op>_fwd, and the dispatch
#: key of the tensors picks the CPU or the CUDA kernel.
IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "angular_distance": {
        "reference": "amc_kernels.reference.angular_distance",
        "cpp": "amc_kernels.cpp_ops.angular_distance",
        "cuda": "amc_kernels.cpp_ops.angular_distance",
        "triton": "amc_kernels.triton_kernels.angular_distance",
    },
    "amc_loss": {
        "reference": "amc_kernels.reference.amc_loss",
        "cpp": "amc_kernels.cpp_ops.amc_loss",
        "cuda": "amc_kernels.cpp_ops.amc_loss",
        "triton": "amc_kernels.triton_kernels.amc_loss",
    },
    "supcon_loss": {
        "reference": "amc_kernels.reference.supcon_loss",
        "cpp": "amc_kernels.cpp_ops.supcon_loss",
        "cuda": "amc_kernels.cpp_ops.supcon_loss",
        "triton": "amc_kernels.triton_kernels.supcon_loss",
    },
    "gradcam": {
        "reference": "amc_kernels.reference.gradcam",
        "cpp": "amc_kernels.cpp_ops.gradcam",
        "cuda": "amc_kernels.cpp_ops.gradcam",
        "triton": "amc_kernels.triton_kernels.gradcam",
    },
    "class_activation_map": {
        "reference": "amc_kernels.reference.class_activation_map",
        "cpp": "amc_kernels.cpp_ops.class_activation_map",
        "cuda": "amc_kernels.cpp_ops.class_activation_map",
        "triton": "amc_kernels.triton_kernels.class_activation_map",
    },
    "cgc_loss": {
        "reference": "amc_kernels.reference.cgc_loss",
        "cpp": "amc_kernels.cpp_ops.cgc_loss",
        "cuda": "amc_kernels.cpp_ops.cgc_loss",
        "triton": "amc_kernels.triton_kernels.cgc_loss",
    },
    "saliency_mask": {
        "reference": "amc_kernels.reference.saliency_mask",
        "cpp": "amc_kernels.cpp_ops.saliency_mask",
        "cuda": "amc_kernels.cpp_ops.saliency_mask",
        "triton": "amc_kernels.triton_kernels.saliency_mask",
    },
}

_REGISTRY: dict[str, dict[str, Implementation]] = {}  # loaded from the table, or registered
_context_stack: list[str] = []
_logged: set[tuple[str, str, str, str]] = set()


def accept_all(call: Call) -> list[str]:
    return []


@torch.compiler.assume_constant_result  # a build property: torch.compile(fullgraph=True) folds it
def has_kernel(schema: str, dispatch_key: str) -> bool:
    """Whether amc_kernels::<schema> has a kernel for the dispatch key ("CPU" or "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"amc_kernels::{schema}", dispatch_key)


@torch.compiler.assume_constant_result  # a build property, read without tracing functools.cache
def extension_error() -> str:
    """Why amc_kernels._C did not load, or "" when it did."""
    from . import _extension

    return _extension.load_error() or ""


def _compiled_refusals(device_type: str, dispatch_key: str) -> Refusals:
    def refusals(call: Call) -> list[str]:
        error = extension_error()
        if error:
            return [error]
        reasons = []
        if call.device.type not in (device_type, "meta"):
            reasons.append(f"needs {device_type} tensors, got {call.device.type}")
        if not has_kernel(f"{call.op}_fwd", dispatch_key):
            reasons.append(f"amc_kernels._C has no {dispatch_key} kernel for {call.op}")
        return reasons

    return refusals


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


@torch.compiler.assume_constant_result
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_refusals(call: Call) -> list[str]:
    if not triton_installed():
        return ["triton is not installed: pip install amc-kernels[triton]"]
    if call.device.type in ("cuda", "meta"):
        return []
    if call.device.type == "cpu":
        if interpreter_enabled():
            return []
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing"]
    return [f"needs CUDA tensors, got {call.device.type}"]


#: What a whole backend needs (device, build, interpreter), before any module is imported.
BACKEND_REFUSALS: dict[str, Refusals] = {
    "reference": accept_all,
    "cpp": _compiled_refusals("cpu", "CPU"),
    "cuda": _compiled_refusals("cuda", "CUDA"),
    "triton": _triton_refusals,
}


def register(
    op: str, backend: str, fn: Callable[..., Any], refusals: Refusals = accept_all
) -> None:
    """Plug an implementation of `op` in at run time (tests, plugins); it replaces the table's."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend must be one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, fn, refusals)


@torch.compiler.assume_constant_result  # imports at trace time, so fullgraph compiles it
def _load(op: str, backend: str) -> bool:
    """Import the table's module for (op, backend) into the registry, once."""
    if backend not in _REGISTRY.get(op, {}):
        module = importlib.import_module(IMPLEMENTATIONS[op][backend])
        own: Refusals = getattr(module, "refusals", accept_all)
        needs = BACKEND_REFUSALS[backend]
        register(op, backend, getattr(module, op), lambda call: needs(call) + own(call))
    return True


@torch.compiler.assume_constant_result
def _load_all() -> bool:
    """Import every table module whose backend can be imported here (reference; cpp and cuda
    with _C; triton when installed). Under torch.compile this runs before the trace first reads
    the registry: the trace would not see the entries of an import made after that read."""
    importable = {
        "reference": True,
        "cpp": not extension_error(),
        "cuda": not extension_error(),
        "triton": triton_installed(),
    }
    for op, modules in IMPLEMENTATIONS.items():
        for backend in modules:
            if importable[backend]:
                _load(op, backend)
    return True


def refusals(backend: str, call: Call) -> list[str]:
    """Why `backend` cannot run `call`; an empty list means it can."""
    if backend not in _REGISTRY.get(call.op, {}):
        if backend not in IMPLEMENTATIONS.get(call.op, {}):
            return [f"no {backend} implementation of {call.op}"]
        reasons = BACKEND_REFUSALS[backend](call)
        if reasons:
            return reasons
        _load(call.op, backend)
    return _REGISTRY[call.op][backend].refusals(call)


def check_backend_name(name: object, source: str) -> None:
    if name not in BACKEND_CHOICES:
        choices = ", ".join(repr(c) for c in BACKEND_CHOICES)
        raise ValueError(f"{source} must be one of {choices}; got {name!r}")


@contextlib.contextmanager
def use_backend(backend: str | None) -> Iterator[None]:
    """Within the block, calls that do not pass ``backend=`` use this backend.

    ``use_backend("auto")`` restores automatic choice, overriding ``AMC_KERNELS_BACKEND``.
    """
    check_backend_name(backend, "use_backend(backend)")
    _context_stack.append(backend or "auto")
    try:
        yield
    finally:
        _context_stack.pop()


def requested(backend: str | None) -> tuple[str, str]:
    """(backend name or "auto", where the request came from)."""
    check_backend_name(backend, "backend")
    if backend is not None:
        return backend, "the backend= argument"
    if _context_stack:
        return _context_stack[-1], "amc_kernels.use_backend"
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env:
        check_backend_name(env, f"the environment variable {ENV_BACKEND}")
        return env, f"the environment variable {ENV_BACKEND}"
    return "auto", "automatic choice"


def candidates(device: torch.device) -> tuple[str, ...]:
    return AUTO_ORDER.get(device.type, FALLBACK_ORDER)


def describe_candidates(call: Call) -> str:
    lines = []
    for backend in BACKENDS:
        reasons = refusals(backend, call)
        lines.append(f"  {backend}: " + ("usable" if not reasons else "; ".join(reasons)))
    return "\n".join(lines)


def select(call: Call, backend: str | None = None) -> Implementation:
    """The implementation that runs `call` under the precedence rules above."""
    name, source = requested(backend)
    if torch.compiler.is_compiling():
        _load_all()
    if name == "auto":
        for candidate in candidates(call.device):
            if not refusals(candidate, call):
                return _chosen(call, candidate, source)
    reasons = refusals(name, call) if name != "auto" else ["no candidate"]
    if reasons:
        raise BackendUnavailableError(
            f"{call.op}: backend {name!r} (from {source}) cannot run this call on "
            f"{call.device.type} with dtype {call.dtype}. "
            f"Candidates:\n{describe_candidates(call)}\n"
            f"Pass backend='auto' (or another usable backend) to choose automatically."
        )
    return _chosen(call, name, source)


def _chosen(call: Call, backend: str, source: str) -> Implementation:
    if os.environ.get(ENV_LOG, "") not in ("", "0"):
        key = (call.op, call.device.type, str(call.dtype), backend)
        if key not in _logged:
            _logged.add(key)
            _log_handler()
            logger.info(
                "amc_kernels: %s on %s/%s -> %s (%s)",
                call.op,
                call.device.type,
                call.dtype,
                backend,
                source,
            )
    return _REGISTRY[call.op][backend]


def _log_handler() -> None:
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # one line per choice, even when the root logger prints too
