"""The dispatcher (docs/design.md#3-backends-and-dispatch): precedence, refusals, quiet fallback,
logging, metadata only."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import amc_kernels
from amc_kernels import _dispatch
from amc_kernels._dispatch import BackendUnavailableError, Call
from amc_kernels._spec import OPS

TOY = "toy_op"


def _refuse_fp16(call: Call) -> list[str]:
    return ["float16 is not supported"] if call.dtype == torch.float16 else []


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private registry with a toy op served by reference, cpp (no fp16) and triton."""
    monkeypatch.setattr(_dispatch, "_REGISTRY", {})
    monkeypatch.setattr(_dispatch, "_logged", set())
    for backend in ("reference", "triton"):
        _dispatch.register(TOY, backend, lambda b=backend: b)
    _dispatch.register(TOY, "cpp", lambda: "cpp", _refuse_fp16)


def toy_call(dtype: torch.dtype = torch.float32, device: str = "cpu") -> Call:
    return Call(TOY, torch.device(device), dtype, ((4, 3),))


def chosen(backend: str | None = None, dtype: torch.dtype = torch.float32) -> str:
    return _dispatch.select(toy_call(dtype), backend).fn()


# --- precedence ---


def test_auto_prefers_cpp_on_cpu(toy_registry: None) -> None:
    assert chosen() == "cpp"


def test_auto_never_picks_triton_on_cpu(toy_registry: None) -> None:
    assert "triton" not in _dispatch.candidates(torch.device("cpu"))
    assert chosen(dtype=torch.float16) == "reference"


def test_explicit_argument_wins_over_context_and_environment(
    toy_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "cpp")
    with amc_kernels.use_backend("reference"):
        assert chosen("triton") == "triton"


def test_context_wins_over_environment(toy_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "cpp")
    with amc_kernels.use_backend("triton"):
        assert chosen() == "triton"
        with amc_kernels.use_backend("reference"):
            assert chosen() == "reference"
        assert chosen() == "triton"
    assert chosen() == "cpp"


def test_environment_wins_over_auto(toy_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "reference")
    assert chosen() == "reference"


def test_auto_at_any_level_restores_automatic_choice(
    toy_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "triton")
    with amc_kernels.use_backend("auto"):
        assert chosen() == "cpp"
    with amc_kernels.use_backend("reference"):
        assert chosen("auto") == "cpp"


def test_context_is_restored_after_an_exception(toy_registry: None) -> None:
    with pytest.raises(RuntimeError), amc_kernels.use_backend("triton"):
        raise RuntimeError("boom")
    assert chosen() == "cpp"


# --- refusals ---


def test_auto_falls_back_quietly(toy_registry: None) -> None:
    assert chosen(dtype=torch.float16) == "reference"


def test_explicit_request_that_cannot_be_met_lists_every_candidate(toy_registry: None) -> None:
    with pytest.raises(BackendUnavailableError) as error:
        chosen("cpp", dtype=torch.float16)
    message = str(error.value)
    assert "toy_op: backend 'cpp' (from the backend= argument)" in message
    assert "cpp: float16 is not supported" in message
    assert "reference: usable" in message
    assert "triton: usable" in message
    assert "cuda: no cuda implementation of toy_op" in message


def test_environment_request_that_cannot_be_met_names_the_variable(
    toy_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="environment variable AMC_KERNELS_BACKEND"):
        chosen()


def test_unavailable_backend_reason_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dispatch, "_REGISTRY", {})
    monkeypatch.setattr(amc_kernels._extension, "load_error", lambda: "amc_kernels._C is not built")
    with pytest.raises(BackendUnavailableError, match=r"cpp: amc_kernels\._C is not built"):
        amc_kernels.angular_distance(torch.randn(4, 3), backend="cpp")


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 3)
    with pytest.raises(BackendUnavailableError, match="triton"):
        amc_kernels.angular_distance(x, backend="triton")


def test_unknown_backend_names_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        amc_kernels.angular_distance(x, backend="gpu")
    with pytest.raises(ValueError, match=r"use_backend\(backend\) must be one of"):
        amc_kernels.use_backend("fast").__enter__()
    monkeypatch.setenv("AMC_KERNELS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="environment variable AMC_KERNELS_BACKEND must be one of"):
        amc_kernels.angular_distance(x)


def test_register_rejects_unknown_backends(toy_registry: None) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.register(TOY, "opencl", lambda: None)


# --- logging and metadata ---


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_each_choice_is_logged_once(toy_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    collect = _Collect()
    _dispatch.logger.addHandler(collect)
    try:
        monkeypatch.setenv("AMC_KERNELS_LOG_DISPATCH", "1")
        for _ in range(3):
            chosen()
        chosen(dtype=torch.float16)
    finally:
        _dispatch.logger.removeHandler(collect)
    assert collect.messages == [
        "amc_kernels: toy_op on cpu/torch.float32 -> cpp (automatic choice)",
        "amc_kernels: toy_op on cpu/torch.float16 -> reference (automatic choice)",
    ]


def test_nothing_is_logged_by_default(toy_registry: None) -> None:
    collect = _Collect()
    _dispatch.logger.addHandler(collect)
    try:
        chosen()
    finally:
        _dispatch.logger.removeHandler(collect)
    assert collect.messages == []


def test_choice_reads_only_metadata(toy_registry: None) -> None:
    # Meta tensors have no data: a dispatcher that read values would fail here.
    x = torch.empty(4, 3, device="meta")
    call = Call(TOY, x.device, x.dtype, (tuple(x.shape),))
    assert _dispatch.select(call).backend == "cpp"  # meta's automatic order: cpp, triton, ...


def test_public_ops_are_registered_for_the_reference() -> None:
    for op in OPS:
        assert not _dispatch.refusals("reference", Call(op, torch.device("cpu"), torch.float32, ()))


def test_the_table_names_a_module_for_every_op_and_backend() -> None:
    assert tuple(_dispatch.IMPLEMENTATIONS) == OPS
    for op, modules in _dispatch.IMPLEMENTATIONS.items():
        assert tuple(modules) == _dispatch.BACKENDS
        assert all(module.rsplit(".", 1)[1] == op for module in modules.values())
        assert callable(getattr(amc_kernels.functional, op))


def test_backends_are_imported_on_first_use() -> None:
    code = (
        "import sys, torch, amc_kernels; "
        "assert 'amc_kernels.cpp_ops.supcon_loss' not in sys.modules; "
        "assert not any(m.startswith('amc_kernels.triton_kernels') for m in sys.modules); "
        "amc_kernels.supcon_loss(torch.randn(4, 2, 3)); "
        "print('amc_kernels.cpp_ops.supcon_loss' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(amc_kernels._extension.available())
