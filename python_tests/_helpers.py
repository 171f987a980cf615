"""Helpers shared by the per-op tests: property-test strategies, validation and dispatch checks, a
backend against the reference, and the checks of the Triton custom ops."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
import torch
from conftest import ALL_DTYPES
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import BackendUnavailableError, functional
from amc_kernels.testing import FLOOR, compare_backend, within_reference_error

T = TypeVar("T")
#: The seeds of the property tests' random inputs.
SEEDS = st.integers(0, 2**16)


# --- property tests ---


def sizes(**bounds: tuple[int, int]) -> dict[str, st.SearchStrategy[int]]:
    """Hypothesis strategies of sizes by name: sizes(n=(0, 9)) is {"n": st.integers(0, 9)}."""
    return {name: st.integers(low, high) for name, (low, high) in bounds.items()}


def shapes(*bounds: tuple[int, int]) -> st.SearchStrategy[tuple[int, ...]]:
    """A hypothesis strategy of shapes: shapes((1, 4), (1, 9)) draws (a, b) with a ≤ 4, b ≤ 9."""
    return st.tuples(*(st.integers(low, high) for low, high in bounds))


# --- validation and dispatch ---


def assert_bad_input_raises(
    op: str,
    positional: dict[str, Any],
    kwargs: dict,
    error: type[Exception],
    match: str,
    **defaults: Any,
) -> None:
    """functional.<op>(*positional, **defaults, backend="reference"), with `kwargs` replacing or
    adding arguments, raises `error` matching `match`; the message starts with "<op>: " unless
    the backend itself is what is wrong."""
    args = {**positional, **defaults, "backend": "reference", **kwargs}
    values = [args.pop(name) for name in positional]
    with pytest.raises(error, match=match) as info:
        getattr(functional, op)(*values, **args)
    assert "backend" in kwargs or str(info.value).startswith(f"{op}: ")


def skip_unless_usable(backend: str, device: torch.device | str = "cpu") -> None:
    """Skip a test of `backend` on `device` where it cannot run here (no interpreter, no _C)."""
    device_type = torch.device(device).type
    if backend == "triton":
        pytest.importorskip("triton")
        if device_type == "cpu" and not amc_kernels._dispatch.interpreter_enabled():
            pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    if backend == "cpp" and device_type != "cpu":
        pytest.skip("cpp runs CPU tensors")
    if backend == "cpp" and not amc_kernels._extension.available():
        pytest.skip("amc_kernels._C is not built")


def unless_cpp_is_refused(run: Callable[[], T]) -> T | None:
    """run() (a call with backend="cpp"), or None where cpp is refused; a refusal must name cpp
    and list the reference as usable."""
    try:
        return run()
    except BackendUnavailableError as error:
        assert "'cpp'" in str(error) and "reference: usable" in str(error)
        return None


def assert_cpp_is_the_automatic_choice(
    op: str,
    args: Sequence,
    dtypes: Sequence[torch.dtype] = ALL_DTYPES,
    shapes: tuple[tuple[int, ...], ...] | None = None,
    options: dict | None = None,
    **kwargs: Any,
) -> None:
    """The dispatcher picks cpp for CPU calls of `op` in each of `dtypes`, with `shapes` (those
    of the tensor arguments by default) and `options`; and a call that names no backend returns
    the cpp result bit for bit."""
    from amc_kernels import _dispatch

    if shapes is None:
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
    for dtype in dtypes:
        call = _dispatch.Call(op, torch.device("cpu"), dtype, shapes, dict(options or {}))
        assert _dispatch.select(call).backend == "cpp"
    automatic = getattr(amc_kernels, op)(*args, **kwargs)
    cpp = getattr(functional, op)(*args, **kwargs, backend="cpp")
    torch.testing.assert_close(automatic, cpp, rtol=0, atol=0)


# --- a backend against the reference ---


def assert_backend_matches(op: str, backend: str, args: Sequence, **kwargs: Any) -> None:
    """Value and gradients of `backend` against the reference under the low-precision rule."""
    ok, error, bound = compare_backend(op, backend, tuple(args), kwargs)
    assert ok, f"{backend} {kwargs}: error {error:.3g} above the bound {bound:.3g}"


def value_and_grads(
    op: str, backend: str, inputs: Sequence[torch.Tensor], *args: Any, **kwargs: Any
) -> list[torch.Tensor]:
    """[output, gradient of each of `inputs`] of functional.<op>(*inputs, *args, **kwargs) on
    `backend`, for a fixed random projection of the output."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = getattr(functional, op)(*leaves, *args, **kwargs, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad((out * weights).sum(), leaves)]


def assert_cpp_close_to_reference(
    op: str,
    inputs: Sequence[torch.Tensor],
    *args: Any,
    tol: float,
    names: Sequence[str],
    **kwargs: Any,
) -> None:
    """value_and_grads of cpp within tol·(1 + the largest entry) of the reference's, each."""
    got = value_and_grads(op, "cpp", inputs, *args, **kwargs)
    expected = value_and_grads(op, "reference", inputs, *args, **kwargs)
    for name, x, y in zip(names, got, expected, strict=True):
        scale = 1 + y.abs().max().item() if y.numel() else 1
        torch.testing.assert_close(
            x, y, rtol=0, atol=tol * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def assert_low_precision_rule(
    low: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype, tolerance: float
) -> float:
    """The reference in `dtype` (low) is within `tolerance` of fp64 on the same rounded inputs
    (exact); the low-precision rule accepts it with that error, and rejects a result off by more
    than its bound. Returns the error."""
    error = (low.double() - exact).abs().max().item()
    assert error < tolerance
    ok, err, bound = within_reference_error(low, low, exact, FLOOR[dtype])
    assert ok and err == pytest.approx(error)
    for base in (exact, low.double()):
        ok, _, _ = within_reference_error(base + 1.01 * bound + error, low, exact, FLOOR[dtype])
        assert not ok
    return error


def assert_follows_the_clamp_convention(
    grad: torch.Tensor, passing: torch.Tensor, blocked: torch.Tensor
) -> None:
    """At the clamp bound: the backward that blocks the gradient there gives 0, and the op's
    gradient is the passing or the blocked one, as amc_kernels._clamp_convention says."""
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    assert torch.equal(blocked, torch.zeros_like(blocked))
    assert torch.equal(grad, passing if CLAMP_GRAD_AT_BOUNDS else blocked)


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- the triton custom ops ---


def opcheck_utils(device: torch.device, autograd: bool = True) -> tuple[str, ...]:
    """The torch.library.opcheck checks for a Triton op on `device`. Under the interpreter the
    fake-tensor checks would launch the interpreted kernel on fake tensors (it copies arguments
    to host memory), so CPU runs the schema (and autograd registration) checks only."""
    utils = ("test_schema", "test_autograd_registration") if autograd else ("test_schema",)
    if device.type == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    return utils


def assert_output_mask_honoured(
    mask: Sequence[bool], got: Sequence[torch.Tensor], full: Sequence[torch.Tensor]
) -> None:
    """A backward asked for some gradients only: each one asked for (and not empty) is the full
    backward's, bit for bit; each other one is an empty tensor."""
    for wanted, g, f in zip(mask, got, full, strict=True):
        if wanted and f.numel():
            assert torch.equal(g, f)
        else:
            assert g.shape == (0,)


def assert_backward_honours_output_masks(bwd: Callable, *args: Any) -> None:
    """bwd(*args, mask) of a backward with two outputs: with one of them asked for, it is the
    full backward's, bit for bit, and the other is an empty tensor."""
    full = bwd(*args, [True, True])
    for mask in ([True, False], [False, True]):
        assert_output_mask_honoured(mask, bwd(*args, mask), full)


def assert_double_backward_raises(out: torch.Tensor, leaf: torch.Tensor, kernel: str) -> None:
    """The Triton backward is first-order: differentiating it again names `kernel`."""
    (grad,) = torch.autograd.grad(out, leaf, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"double backward.*{kernel}"):
        grad.sum().backward()


def sum_of_squares(out: torch.Tensor) -> torch.Tensor:
    return (out * out).sum()


def assert_compiled_triton_matches(
    op: str,
    leaves: Sequence[torch.Tensor],
    *args: Any,
    value_tol: tuple[float, float],
    grad_tol: tuple[float, float],
    total: Callable[[Any], torch.Tensor] = lambda out: out,
    **kwargs: Any,
) -> None:
    """amc_kernels.<op>(*leaves, *args, **kwargs) on the triton backend under
    torch.compile(fullgraph=True): total(output) (a scalar) and its gradient in `leaves`
    against the reference in fp64 on the same values; value_tol and grad_tol are (rtol, atol)."""
    triton_op = getattr(amc_kernels, op)

    def compiled(*xs: torch.Tensor) -> torch.Tensor:
        return total(triton_op(*xs, *args, **kwargs, backend="triton"))

    got = torch.compile(compiled, fullgraph=True)(*leaves)
    grads = torch.autograd.grad(got, leaves)
    exact = [x.detach().double().requires_grad_() for x in leaves]
    expected = total(getattr(functional, op)(*exact, *args, **kwargs, backend="reference"))
    expected_grads = torch.autograd.grad(expected, exact)
    rtol, atol = value_tol
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)
    rtol, atol = grad_tol
    torch.testing.assert_close(
        [g.double() for g in grads], list(expected_grads), rtol=rtol, atol=atol
    )
