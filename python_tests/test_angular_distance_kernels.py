"""angular_distance (docs/design.md#21-angular_distance) on the cpp and triton backends: tiling,
the arccos polynomials, special vectors, the clamp bound, opcheck, against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import (
    assert_backend_matches,
    assert_backward_honours_output_masks,
    assert_compiled_triton_matches,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    assert_follows_the_clamp_convention,
    opcheck_utils,
)
from conftest import (
    EXACT_DTYPES,
    TRITON_DTYPES,
    cpp_at_the_clamp_bounds,
    kind_and_dtype,
    needs_cpp,
    rand,
)
from hypothesis import given, settings
from test_angular_distance import DELTA, SPECIAL, angular, angular_cases

from amc_kernels import functional

# --- cpp backend ---


def cpp_angular(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return functional.angular_distance(x, y, backend="cpp")


def assert_cpp_same_as_reference_fp64(args: tuple, seed: int, grad_tol: float) -> None:
    """θ to 1e-12 of the reference, and the gradients of a seeded random projection of θ to
    grad_tol."""
    leaves = [a.clone().requires_grad_() for a in args]
    ref_leaves = [a.clone().requires_grad_() for a in args]
    got, expected = cpp_angular(*leaves), angular(*ref_leaves)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if got.numel():
        weights = rand(*got.shape, seed=seed)
        grads = torch.autograd.grad((got * weights).sum(), leaves)
        expected_grads = torch.autograd.grad((expected * weights).sum(), ref_leaves)
        torch.testing.assert_close(grads, expected_grads, rtol=grad_tol, atol=grad_tol)


@pytest.mark.cpp
@needs_cpp
def test_cpp_fp64_is_exact_to_rounding() -> None:
    # x against y over several 128 × 512 tiles; x against itself over several symmetric tiles.
    x, y = rand(131, 9, seed=1), rand(517, 9, seed=2)
    for args in ((x, y), (rand(300, 9, seed=3),)):
        assert_cpp_same_as_reference_fp64(args, seed=4, grad_tol=1e-12)


@pytest.mark.cpp
@needs_cpp
def test_cpp_fp32_arccos_within_two_ulp_over_the_whole_range() -> None:
    # The kernel's vectorised arccos polynomial against torch.arccos on the same fp32 cosines,
    # for angles spread over [0, π] (random features only reach the middle of the range).
    angles = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    y = torch.stack([angles.cos(), angles.sin()], dim=1).float()
    x = torch.tensor([[1.0, 0.0]])
    got, expected = cpp_angular(x, y), angular(x, y)
    ulp = torch.nextafter(expected, torch.tensor(math.inf)) - expected
    assert ((got - expected).abs() / ulp).max().item() <= 2


@pytest.mark.cpp
@needs_cpp
@kind_and_dtype(SPECIAL)
def test_cpp_special_vectors(kind: str, dtype: torch.dtype) -> None:
    xs, ys = SPECIAL[kind]
    x = torch.tensor(xs, dtype=dtype)
    y = None if ys is None else torch.tensor(ys, dtype=dtype)
    if kind == "zero" and dtype == torch.float16:
        # The gradient of a zero row is 1e12-scaled, above the fp16 maximum: inf in both.
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(cpp_angular(leaf, y).sum(), leaf)
        assert bool(torch.isinf(grad[0]).any()) and bool(torch.isfinite(grad[1]).all())
        return
    for args in ((x,) if y is None else (x, y), (x,)):
        assert_backend_matches("angular_distance", "cpp", args)


def clamp_bound_pair(dtype: torch.dtype, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y with ⟨x̂, ŷ⟩ = sign·(1 − δ) exactly in `dtype`: θ sits on the clamp bound."""
    bound = torch.tensor(1 - DELTA, dtype=dtype)
    y = torch.stack([sign * bound, torch.sqrt(1 - bound * bound)])[None]
    x = torch.tensor([[2.0, 0.0]], dtype=dtype)
    cosine = functional.angular_distance(x, y, backend="reference").cos()
    assert (x / 2 @ y.T).item() == sign * bound.item()  # exact: ‖y‖ rounds to 1
    assert cosine.item() == pytest.approx(sign * bound.item(), abs=1e-6)
    return x, y


@cpp_at_the_clamp_bounds
def test_cpp_gradient_at_the_clamp_bound_follows_torch_clamp(
    dtype: torch.dtype, sign: float
) -> None:
    x, y = clamp_bound_pair(dtype, sign)
    grads = {}
    for backend in ("cpp", "reference"):
        xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = functional.angular_distance(xa, ya, backend=backend)
        grads[backend] = torch.autograd.grad(out.sum(), (xa, ya))
    torch.testing.assert_close(grads["cpp"], grads["reference"], rtol=1e-5, atol=1e-7)
    # Both conventions, directly: the tangential gradient is ~1 with it and 0 without it.
    grad = torch.ones(1, 1, dtype=dtype)
    bwd = torch.ops.amc_kernels.angular_distance_bwd
    passing, blocked = (bwd(grad, x, y, at, [True, True])[0] for at in (True, False))
    assert passing[0, 1].abs().item() > 0.1
    assert_follows_the_clamp_convention(grads["cpp"][0], passing, blocked)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(**angular_cases(9, 6))
def test_cpp_property_matches_reference(n: int, m: int, d: int, seed: int, with_y: bool) -> None:
    x = rand(n, d, seed=seed)
    args = (x, rand(m, d, seed=seed + 1)) if with_y else (x,)
    assert_cpp_same_as_reference_fp64(args, seed=seed + 2, grad_tol=1e-10)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    assert_cpp_is_the_automatic_choice("angular_distance", (rand(4, 3, seed=6),))


# --- triton backend ---

try:  # the interpreter is on by now (conftest) where there is no GPU
    import triton
    import triton.language as tl

    from amc_kernels.triton_kernels import _math
except ImportError:  # the tests below skip without triton
    triton = None
else:

    @triton.jit
    def _arccos_probe_kernel(
        c_ptr, theta_ptr, grad_ptr, n, FP64: tl.constexpr, BLOCK: tl.constexpr
    ):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        c = tl.load(c_ptr + offsets, mask=mask)
        tl.store(theta_ptr + offsets, _math.clamped_arccos(c, FP64), mask=mask)
        tl.store(grad_ptr + offsets, _math.clamped_arccos_grad(c, FP64, False), mask=mask)


def beyond_one_tile(device: torch.device) -> int:
    """A batch larger than one row tile: 16 under the interpreter, 128 on GPUs."""
    return 37 if device.type == "cpu" else 300


def assert_triton_matches(x: torch.Tensor, y: torch.Tensor | None) -> None:
    assert_backend_matches("angular_distance", "triton", (x, y))


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("with_y", [True, False], ids=["x_y", "y_none"])
@pytest.mark.parametrize("size", ["one", "odd", "beyond_tile"])
def test_triton_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, with_y: bool, size: str
) -> None:
    n = {"one": 1, "odd": 5, "beyond_tile": beyond_one_tile(triton_device)}[size]
    x = rand(n, 16, seed=1, dtype=dtype).to(triton_device)
    y = rand(n + 3, 16, seed=2, dtype=dtype).to(triton_device) if with_y else None
    assert_triton_matches(x, y)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_triton_streams_the_feature_axis_in_chunks(
    triton_device: torch.device, dtype: torch.dtype
) -> None:
    # D = 40 spans three 16-wide chunks under the interpreter; D = 300 is chunked on GPUs.
    d = 40 if triton_device.type == "cpu" else 300
    x = rand(9, d, seed=3, dtype=dtype).to(triton_device)
    assert_triton_matches(x, rand(6, d, seed=4, dtype=dtype).to(triton_device))
    assert_triton_matches(x, None)


@pytest.mark.triton
def test_triton_non_contiguous_inputs(triton_device: torch.device) -> None:
    x = rand(12, 5, seed=41).to(triton_device)[::2]  # strided rows
    y = rand(7, 8, seed=42).to(triton_device).T[:, :5]  # transposed, then sliced
    assert not x.is_contiguous() and not y.is_contiguous()
    assert_triton_matches(x, y)
    assert_triton_matches(y, None)


@pytest.mark.triton
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_triton_special_vectors(triton_device: torch.device, kind: str) -> None:
    xs, ys = SPECIAL[kind]
    x = torch.tensor(xs, dtype=torch.float64, device=triton_device)
    y = None if ys is None else torch.tensor(ys, dtype=torch.float64, device=triton_device)
    assert_triton_matches(x, y)
    assert_triton_matches(x, None)
    for dtype in (torch.float32, torch.float64):
        leaf = x.to(dtype).requires_grad_()
        out = functional.angular_distance(leaf, backend="triton")
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(grad).all())


@pytest.mark.triton
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_triton_diagonal_is_exact_and_carries_no_gradient(
    triton_device: torch.device, dtype: torch.dtype
) -> None:
    # ⟨x̂_i, x̂_i⟩ = 1 exactly (min(1, ‖x‖²/eps²)), so θ_ii is the clamp angle of the dtype and
    # its gradient is 0, whatever rounding would give; a zero row stays at π/2.
    x = torch.cat([rand(20, 7, seed=5, dtype=dtype), torch.zeros(1, 7, dtype=dtype)])
    leaf = x.to(triton_device).requires_grad_()
    theta = functional.angular_distance(leaf, backend="triton")
    clamp_angle = torch.arccos(torch.tensor(1 - DELTA, dtype=dtype)).item()
    expected = torch.tensor([clamp_angle] * 20 + [math.pi / 2], dtype=dtype)
    torch.testing.assert_close(theta.diagonal().cpu(), expected, rtol=0, atol=1e-7)
    (grad,) = torch.autograd.grad(theta.diagonal()[:20].sum(), leaf)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.triton
def test_triton_gradcheck(triton_device: torch.device) -> None:
    x = rand(3, 4, seed=11).to(triton_device).requires_grad_()
    y = rand(5, 4, seed=12).to(triton_device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: functional.angular_distance(a, b, backend="triton"), (x, y), fast_mode=True
    )
    off = ~torch.eye(3, dtype=torch.bool, device=triton_device)
    assert torch.autograd.gradcheck(
        lambda a: functional.angular_distance(a, backend="triton")[off], (x,), fast_mode=True
    )


@pytest.mark.triton
def test_triton_empty_batches_and_empty_features(triton_device: torch.device) -> None:
    x = torch.zeros(0, 3, dtype=torch.float64, device=triton_device, requires_grad=True)
    y = torch.ones(4, 3, dtype=torch.float64, device=triton_device, requires_grad=True)
    assert functional.angular_distance(x, backend="triton").shape == (0, 0)
    out = functional.angular_distance(x, y, backend="triton")
    assert out.shape == (0, 4)
    grads = torch.autograd.grad(out.sum(), (x, y))
    assert grads[0].shape == (0, 3) and torch.equal(grads[1], torch.zeros_like(y))
    # D = 0: every x̂ is the zero vector, so every angle is π/2.
    empty = torch.zeros(2, 0, device=triton_device)
    torch.testing.assert_close(
        functional.angular_distance(empty, backend="triton").cpu(), torch.full((2, 2), math.pi / 2)
    )


def _arccos_probe(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared Triton clamped arccos and its gradient, elementwise on c."""
    theta, grad = torch.empty_like(c), torch.empty_like(c)
    block = 1 << 16 if c.device.type == "cpu" else 1024  # few interpreted programs; GPU-sized
    grid = (triton.cdiv(c.numel(), block),)
    _arccos_probe_kernel[grid](
        c, theta, grad, c.numel(), FP64=c.dtype == torch.float64, BLOCK=block
    )
    return theta, grad


@pytest.mark.triton
@pytest.mark.parametrize(
    ("dtype", "max_abs", "max_ulps"),
    [(torch.float32, 3.6e-7, 1.5), (torch.float64, 1e-15, 2.5)],
    ids=["float32", "float64"],
)
def test_triton_arccos_accuracy(
    triton_device: torch.device, dtype: torch.dtype, max_abs: float, max_ulps: float
) -> None:
    # Against torch.arccos in fp64 of the same cosine, on a dense grid over [−1+δ, 1−δ] and
    # points near ±1. Measured under the interpreter (amc_kernels.triton_kernels._math):
    # fp32 3.0e-7 rad and 1.26 ulp, fp64 8.9e-16 rad and 2 ulp; the bounds leave room for the
    # fused multiply-adds of GPU code.
    grid = torch.linspace(-1 + DELTA, 1 - DELTA, 1_000_001, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    near = 1 - torch.rand(50_000, generator=gen, dtype=torch.float64) * 1e-3
    bound = torch.tensor(1 - DELTA, dtype=dtype)
    c = torch.cat([grid, near, -near]).to(dtype).clamp(-bound, bound).to(triton_device)
    theta, grad = _arccos_probe(c)
    exact = torch.arccos(c.double())
    error = (theta.double() - exact).abs()
    ulp = torch.nextafter(theta, torch.full_like(theta, 4.0)).double() - theta.double()
    assert error.max().item() <= max_abs
    assert (error / ulp).max().item() <= max_ulps
    # The gradient inside the bounds is torch.arccos's −1/√(1 − c²), in the same dtype.
    inside = c.abs() < bound.to(triton_device)
    expected = -1 / torch.sqrt(1 - c[inside] * c[inside])
    torch.testing.assert_close(grad[inside], expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert torch.equal(grad[~inside], torch.zeros_like(grad[~inside]))


def _triton_ops():
    from amc_kernels.triton_kernels import angular_distance as ops

    return ops


@pytest.mark.triton
def test_triton_opcheck(triton_device: torch.device) -> None:
    ops = _triton_ops()
    utils = opcheck_utils(triton_device)
    x = rand(5, 4, seed=1).to(triton_device).requires_grad_()
    y = rand(3, 4, seed=2).to(triton_device).requires_grad_()
    for other in (y, None):
        torch.library.opcheck(ops.angular_distance_fwd, (x, other), test_utils=utils)
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    grad = rand(5, 3, seed=3).to(triton_device)
    for mask in ([True, True], [True, False], [False, True]):
        args = (grad, x.detach(), y.detach(), CLAMP_GRAD_AT_BOUNDS, mask)
        torch.library.opcheck(ops.angular_distance_bwd, args, test_utils=utils)


@pytest.mark.triton
def test_triton_backward_honours_output_mask(triton_device: torch.device) -> None:
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    ops = _triton_ops()
    x, y = rand(6, 5, seed=4).to(triton_device), rand(4, 5, seed=5).to(triton_device)
    for other in (y, None):
        grad = rand(6, 6 if other is None else 4, seed=6).to(triton_device)
        bwd_args = (grad, x, other, CLAMP_GRAD_AT_BOUNDS)
        assert_backward_honours_output_masks(ops.angular_distance_bwd, *bwd_args)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_torch_compile_fullgraph() -> None:
    x = rand(40, 16, seed=1).float().cuda().requires_grad_()
    y = rand(30, 16, seed=2).float().cuda().requires_grad_()
    assert_compiled_triton_matches(
        "angular_distance", [x, y], total=torch.sum, value_tol=(1e-5, 1e-4), grad_tol=(1e-4, 1e-4)
    )


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.angular_distance(x, backend="triton")
    assert_double_backward_raises(out.sum(), x, "angular_distance_triton_bwd")
