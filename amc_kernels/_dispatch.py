"""Backend choice for every op (DESIGN §3).

Precedence: an explicit ``backend=`` argument, then :func:`use_backend`, then the
``AMC_KERNELS_BACKEND`` environment variable, then the device's automatic priority list.
``"auto"`` at any level means the automatic choice from there on. A named backend that cannot
serve the call raises :class:`BackendUnavailableError` listing every candidate and its reasons;
the automatic choice falls back quietly to the next candidate. Only metadata (device type,
dtype, shapes, options) is read: choosing never synchronises with the device.
"""

from __future__ import annotations

import contextlib
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

#: Automatic order per device type. On GPUs the fused backends come first (their relative
#: order is set by measured speed as they land); Triton on CPU is never chosen automatically.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
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
    fn: Callable[..., Any]
    refusals: Refusals  # the reasons it cannot run a call; empty when it can


_REGISTRY: dict[str, dict[str, Implementation]] = {}
_UNAVAILABLE: dict[str, str] = {}  # backend -> why it has no implementations at all
_context_stack: list[str] = []
_logged: set[tuple[str, str, str, str]] = set()


def accept_all(call: Call) -> list[str]:
    return []


def register(
    op: str, backend: str, fn: Callable[..., Any], refusals: Refusals = accept_all
) -> None:
    """Plug an implementation of `op` into the registry (later registrations replace earlier)."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend must be one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(op, backend, fn, refusals)


def mark_unavailable(backend: str, reason: str) -> None:
    """Record why a whole backend is missing (for example, the extension is not built)."""
    _UNAVAILABLE[backend] = reason


def registered_ops() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def refusals(backend: str, call: Call) -> list[str]:
    """Why `backend` cannot run `call`; an empty list means it can."""
    impl = _REGISTRY.get(call.op, {}).get(backend)
    if impl is None:
        default = f"no {backend} kernel for this op in this build"
        return [_UNAVAILABLE.get(backend, default)]
    return impl.refusals(call)


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
