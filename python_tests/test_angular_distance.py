"""angular_distance (docs/design.md#21-angular_distance): closed forms, a numpy oracle, gradients,
dtypes, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ALL_DTYPES, ZERO_FP16, f64, needs_cpp, rand
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import BackendUnavailableError, functional
from amc_kernels.testing import FLOOR, compare_backend, within_reference_error

DELTA = 1e-7
SELF_ANGLE = math.acos(1 - DELTA)  # θ of identical vectors: the clamp stops at 1 − 1e-7
ANTIPODAL = math.acos(-1 + DELTA)  # θ of opposite vectors: π − acos(1 − 1e-7)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def angular(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return functional.angular_distance(x, y, backend="reference")


def np_angles(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The DESIGN formula with plain loops in float64 (independent of amc_kernels)."""

    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(math.sqrt(float(np.dot(v, v))), 1e-12)

    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            cosine = float(np.dot(unit(x[i]), unit(y[j])))
            out[i, j] = math.acos(min(max(cosine, -1 + DELTA), 1 - DELTA))
    return out


def assert_exact(got: torch.Tensor, expected: object) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# --- closed form ---


def test_orthogonal_vectors_are_half_pi_apart() -> None:
    # ⟨e1, 2·e2⟩ = 0, arccos(0) = π/2; ⟨e1, e1 + e2⟩ / √2 = 1/√2 → π/4.
    x = f64([[1.0, 0.0, 0.0]])
    y = f64([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    assert_exact(angular(x, y), [[math.pi / 2, math.pi / 4]])


def test_three_four_five_triangle() -> None:
    # x̂ = (3, 4)/5, ŷ = (4, 3)/5: cos = 24/25, θ = acos(0.96) ≈ 0.2838 rad.
    assert_exact(angular(f64([[3.0, 4.0]]), f64([[4.0, 3.0]])), [[math.acos(0.96)]])


def test_identical_vectors_stop_at_the_clamp() -> None:
    # cos = 1 is clamped to 1 − 1e-7: θ = acos(1 − 1e-7) ≈ √(2e-7) ≈ 4.472e-4, not 0.
    x = f64([[0.3, -1.2, 2.0], [5.0, 0.0, 0.0]])
    assert_exact(angular(x).diagonal(), [SELF_ANGLE, SELF_ANGLE])
    assert abs(SELF_ANGLE - 4.4721359e-4) < 1e-10


def test_antipodal_vectors_stop_at_the_clamp() -> None:
    # cos = −1 is clamped to −1 + 1e-7: θ = acos(−1 + 1e-7) = π − acos(1 − 1e-7) ≈ π − 4.472e-4.
    got = angular(f64([[1.0, 2.0]]), f64([[-3.0, -6.0]]))
    assert_exact(got, [[ANTIPODAL]])
    assert abs(ANTIPODAL - (math.pi - SELF_ANGLE)) < 1e-12


def test_zero_vector_is_half_pi_from_everything() -> None:
    # x̂ = 0 / max(0, 1e-12) = 0, so cos = 0 and θ = π/2 against any row, itself included.
    x = f64([[0.0, 0.0], [1.0, 1.0]])
    assert_exact(angular(x)[0], [math.pi / 2, math.pi / 2])
    assert_exact(angular(x)[:, 0], [math.pi / 2, math.pi / 2])


def test_tiny_norms_use_the_max_norm_eps() -> None:
    # ‖x‖ = 1e-9 > 1e-12: x̂ is the unit direction e1, so θ(x, e1 + e2) = π/4.
    # ‖x‖ = 1e-13 < 1e-12: x̂ = x / 1e-12 = 0.1·e1, cos = 0.1/√2, θ = acos(0.1/√2) ≈ 1.5000 rad.
    got = angular(f64([[1e-9, 0.0], [1e-13, 0.0]]), f64([[1.0, 1.0]]))
    assert_exact(got, [[math.pi / 4], [math.acos(0.1 / math.sqrt(2))]])


def test_clamp_bound_is_rounded_in_the_fp32_compute_dtype() -> None:
    # In fp32, 1 − 1e-7 rounds to 1 − 2⁻²³, so θ_ii = acos(1 − 2⁻²³) ≈ 4.8828e-4 (SOURCES §1.1).
    x = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float32)
    expected = math.acos(float(np.float32(1 - DELTA)))
    assert abs(expected - 4.8828125e-4) < 1e-9
    torch.testing.assert_close(angular(x).diagonal(), torch.full((2,), expected), rtol=2e-6, atol=0)


def test_numpy_oracle_on_random_inputs() -> None:
    for seed, (n, m, d) in enumerate([(1, 1, 1), (4, 7, 3), (9, 2, 16), (5, 5, 2)]):
        x, y = rand(n, d, seed=seed), rand(m, d, seed=100 + seed)
        expected = np_angles(x.numpy(), y.numpy())
        torch.testing.assert_close(angular(x, y), torch.from_numpy(expected), rtol=0, atol=1e-12)
        expected = np_angles(x.numpy(), x.numpy())
        torch.testing.assert_close(angular(x), torch.from_numpy(expected), rtol=0, atol=1e-12)


# --- equivalences and properties ---


def test_y_none_equals_y_equal_x() -> None:
    x = rand(6, 5)
    torch.testing.assert_close(angular(x), angular(x, x.clone()), rtol=0, atol=1e-14)


def test_y_none_gradient_is_the_sum_of_both_sides() -> None:
    x = rand(5, 4, seed=3)
    weights = rand(5, 5, seed=4)
    xa = x.clone().requires_grad_()
    (g_none,) = torch.autograd.grad((angular(xa) * weights).sum(), xa)
    xb, yb = x.clone().requires_grad_(), x.clone().requires_grad_()
    gx, gy = torch.autograd.grad((angular(xb, yb) * weights).sum(), (xb, yb))
    torch.testing.assert_close(g_none, gx + gy, rtol=1e-10, atol=1e-12)


def test_invariant_to_positive_scaling() -> None:
    x, y = rand(5, 4, seed=1), rand(3, 4, seed=2)
    base = angular(x, y)
    # Powers of two scale the norms exactly: bit-identical results.
    assert torch.equal(angular(8.0 * x, 0.25 * y), base)
    # Any positive per-row scale: equal up to rounding.
    scale_x, scale_y = rand(5, 1, seed=5).abs() + 0.1, rand(3, 1, seed=6).abs() * 30 + 1e-3
    torch.testing.assert_close(angular(scale_x * x, scale_y * y), base, rtol=0, atol=1e-12)


def test_symmetry_and_negation() -> None:
    x, y = rand(4, 6, seed=7), rand(5, 6, seed=8)
    torch.testing.assert_close(angular(x, y), angular(y, x).T, rtol=0, atol=1e-14)
    # θ(x, −y) = π − θ(x, y) away from the clamp.
    torch.testing.assert_close(angular(x, -y), math.pi - angular(x, y), rtol=0, atol=1e-12)


def test_range_is_within_the_clamp() -> None:
    x = torch.cat([rand(6, 3, seed=9), -rand(6, 3, seed=9), torch.zeros(1, 3, dtype=torch.float64)])
    theta = angular(x)
    assert bool((theta >= SELF_ANGLE - 1e-15).all()) and bool((theta <= ANTIPODAL + 1e-15).all())


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(0, 6),
    m=st.integers(0, 6),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    with_y=st.booleans(),
)
def test_property_matches_numpy_oracle(n: int, m: int, d: int, seed: int, with_y: bool) -> None:
    x = rand(n, d, seed=seed)
    y = rand(m, d, seed=seed + 1) if with_y else None
    got = angular(x, y)
    expected = np_angles(x.numpy(), (x if y is None else y).numpy())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=0, atol=1e-12)


# --- gradients ---


def test_gradcheck_x_and_y() -> None:
    x = rand(3, 4, seed=11).requires_grad_()
    y = rand(5, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: angular(a, b), (x, y))


def test_gradcheck_y_none() -> None:
    x = rand(4, 3, seed=13).requires_grad_()
    # Only the off-diagonal entries: the diagonal sits on the clamp, where θ is flat.
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a: angular(a)[off], (x,))


def _grad(x: torch.Tensor, y: torch.Tensor | None) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_()] + ([] if y is None else [y.clone().requires_grad_()])
    out = angular(*leaves) if y is not None else angular(leaves[0])
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape).to(out.dtype)
    return list(torch.autograd.grad((out * weights).sum(), leaves))


SPECIAL = {
    # identical rows (θ → 0), including duplicates inside the batch
    "identical": ([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0], [0.5, 0.25, 0.0]], None),
    # antipodal rows (θ → π)
    "antipodal": ([[1.0, 2.0, -1.0], [0.5, 0.25, 0.0]], [[-1.0, -2.0, 1.0], [-2.0, -1.0, 0.0]]),
    # zero rows (x̂ = 0)
    "zero": ([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0]], [[0.0, 0.0, 0.0], [-0.5, 0.25, 1.0]]),
}


@pytest.mark.parametrize(
    "dtype",
    [pytest.param(dt, id=str(dt).split(".")[-1]) for dt in ALL_DTYPES],
)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_gradients_are_finite_at_special_vectors(
    kind: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    if kind == "zero" and dtype == torch.float16:
        request.applymarker(ZERO_FP16)
    xs, ys = SPECIAL[kind]
    x = torch.tensor(xs, dtype=dtype)
    y = None if ys is None else torch.tensor(ys, dtype=dtype)
    for grad in _grad(x, y) + _grad(x, None):
        assert grad.dtype == dtype
        assert bool(torch.isfinite(grad).all()), grad


@pytest.mark.parametrize(
    "dtype",
    [pytest.param(dt, id=str(dt).split(".")[-1]) for dt in ALL_DTYPES],
)
def test_gradient_is_exactly_zero_where_clamped(dtype: torch.dtype) -> None:
    # Rows whose unit vectors are exact in binary: ⟨x̂_i, x̂_i⟩ = 1 exactly, above 1 − δ.
    x = torch.tensor(
        [[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, -4.0, 0.0, 0.0]], dtype=dtype
    )
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(angular(leaf).diagonal().sum(), leaf)
    assert torch.equal(grad, torch.zeros_like(grad))
    # Against y: x_i == y_j (θ = clamp) and x_i == −y_k (θ = π-clamp) carry no gradient either.
    a, b = x.clone().requires_grad_(), torch.cat([x, -x]).requires_grad_()
    theta = angular(a, b)
    ga, gb = torch.autograd.grad(
        theta[:, :3].diagonal().sum() + theta[:, 3:].diagonal().sum(), (a, b)
    )
    assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gb, torch.zeros_like(gb))
    # ...while a pair inside the clamp does get a gradient (the check above can fail).
    (g_off,) = torch.autograd.grad(angular(leaf)[0, 1], leaf)
    assert bool((g_off != 0).any())


def test_gradient_at_a_zero_row_is_the_eps_derivative() -> None:
    # x̂ = x / max(‖x‖, 1e-12) has derivative I / 1e-12 at x = 0; cos = 0 so dθ/dcos = −1:
    # ∂θ(x, y)/∂x = −ŷ · 1e12 = −(0.6, 0.8) · 1e12 for y = (3, 4).
    x = f64([[0.0, 0.0]]).requires_grad_()
    (grad,) = torch.autograd.grad(angular(x, f64([[3.0, 4.0]])).sum(), x)
    torch.testing.assert_close(grad, f64([[-0.6e12, -0.8e12]]), rtol=1e-12, atol=0)


def test_gradient_is_exactly_zero_on_random_fp64_diagonal() -> None:
    x = rand(6, 5, seed=21).requires_grad_()
    (grad,) = torch.autograd.grad(angular(x).diagonal().sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


# --- dtypes and edge cases ---


@pytest.mark.parametrize(
    "dtype",
    [pytest.param(dt, id=str(dt).split(".")[-1]) for dt in ALL_DTYPES],
)
def test_output_keeps_the_input_dtype(dtype: torch.dtype) -> None:
    x, y = rand(4, 3, dtype=dtype), rand(2, 3, seed=1, dtype=dtype)
    assert angular(x, y).dtype == dtype
    assert angular(x).dtype == dtype


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float16, 4e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-5)],
    ids=["float16", "bfloat16", "float32"],
)
def test_low_precision_rule_on_the_reference(dtype: torch.dtype, tolerance: float) -> None:
    x, y = rand(7, 8, seed=31, dtype=dtype), rand(5, 8, seed=32, dtype=dtype)
    low = angular(x, y)
    exact = angular(x.double(), y.double())  # the same (rounded) inputs, computed in fp64
    error = (low.double() - exact).abs().max().item()
    assert 0 < error < tolerance  # rounding is visible but small (fp32 compute, rounded output)
    ok, err, bound = within_reference_error(low, low, exact, FLOOR[dtype])
    assert ok and err == pytest.approx(error)
    # A result off by more than the bound is rejected.
    ok, _, _ = within_reference_error(low.double() + 1.01 * bound + error, low, exact, FLOOR[dtype])
    assert not ok


def test_empty_batches(device: torch.device) -> None:
    x = torch.zeros(0, 3, dtype=torch.float64, device=device)
    y = torch.ones(4, 3, dtype=torch.float64, device=device)
    assert angular(x).shape == (0, 0)
    assert angular(x, y).shape == (0, 4)
    assert angular(y, x).shape == (4, 0)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(angular(leaf, y).sum(), leaf)
    assert grad.shape == (0, 3)


def test_output_is_on_the_input_device(device: torch.device) -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device)
    out = angular(x)
    assert out.device == x.device
    torch.testing.assert_close(
        out[0, 1].cpu(), torch.tensor(math.pi / 2, dtype=torch.float32), rtol=0, atol=1e-6
    )


# --- validation ---

X = rand(4, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": [[1.0, 0.0]]}, TypeError, "x must be a torch.Tensor"),
        ({"x": torch.ones(3, 2, dtype=torch.int64)}, TypeError, "x must be a floating-point"),
        ({"x": torch.ones(3, 2, dtype=torch.bool)}, TypeError, "x must be a floating-point"),
        ({"x": torch.ones(3)}, ValueError, r"x must have shape \[N, D\]"),
        ({"x": torch.ones(2, 3, 4)}, ValueError, r"x must have shape \[N, D\]"),
        ({"y": np.ones((2, 3))}, TypeError, "y must be a torch.Tensor"),
        ({"y": torch.ones(2, 3, dtype=torch.int32)}, TypeError, "y must be a floating-point"),
        (
            {"y": torch.ones(2, 3, 1, dtype=torch.float64)},
            ValueError,
            r"y must have shape \[M, D\]",
        ),
        ({"y": torch.ones(2, 4, dtype=torch.float64)}, ValueError, "y has size 4 in dimension 1"),
        ({"y": torch.ones(2, 3, dtype=torch.float32)}, TypeError, "y has dtype torch.float32"),
        ({"y": torch.ones(2, 3, dtype=torch.float64, device="meta")}, ValueError, "y is on meta"),
        ({"x": f64([[1.0, float("nan")]])}, ValueError, "x contains NaN or infinite"),
        ({"x": f64([[1.0, float("inf")]])}, ValueError, "x contains NaN or infinite"),
        ({"y": f64([[1.0, -float("inf"), 0.0]])}, ValueError, "y contains NaN or infinite"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"x": X, "y": None, "backend": "reference", **kwargs}
    with pytest.raises(error, match=match) as info:
        functional.angular_distance(args.pop("x"), args.pop("y"), **args)
    assert "angular_distance" in str(info.value) or kwargs.get("backend")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = f64([[1.0, float("nan")], [0.0, 1.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    out = functional.angular_distance(x, backend="reference")
    assert bool(out[0].isnan().all()) and not bool(out[1, 1].isnan())


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    try:
        got = amc_kernels.angular_distance(X, backend="cpp")
    except BackendUnavailableError as error:
        assert "'cpp'" in str(error) and "reference: usable" in str(error)
    else:
        torch.testing.assert_close(got, angular(X), rtol=0, atol=1e-12)


# --- cpp backend ---


def cpp_angular(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return functional.angular_distance(x, y, backend="cpp")


def assert_matches_reference(args: tuple) -> None:
    from amc_kernels.testing import compare_backend

    ok, error, bound = compare_backend("angular_distance", "cpp", args, {})
    assert ok, f"cpp error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.cpp
@needs_cpp
def test_cpp_fp64_is_exact_to_rounding() -> None:
    # x against y over several 128 × 512 tiles; x against itself over several symmetric tiles.
    x, y = rand(131, 9, seed=1), rand(517, 9, seed=2)
    for args in ((x, y), (rand(300, 9, seed=3),)):
        leaves = [a.clone().requires_grad_() for a in args]
        ref_leaves = [a.clone().requires_grad_() for a in args]
        got, expected = cpp_angular(*leaves), angular(*ref_leaves)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        weights = rand(*got.shape, seed=4)
        grads = torch.autograd.grad((got * weights).sum(), leaves)
        expected_grads = torch.autograd.grad((expected * weights).sum(), ref_leaves)
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


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
@pytest.mark.parametrize("dtype", [pytest.param(dt, id=str(dt)[6:]) for dt in ALL_DTYPES])
@pytest.mark.parametrize("kind", sorted(SPECIAL))
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
        assert_matches_reference(args)


def clamp_bound_pair(dtype: torch.dtype, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y with ⟨x̂, ŷ⟩ = sign·(1 − δ) exactly in `dtype`: θ sits on the clamp bound."""
    bound = torch.tensor(1 - DELTA, dtype=dtype)
    y = torch.stack([sign * bound, torch.sqrt(1 - bound * bound)])[None]
    x = torch.tensor([[2.0, 0.0]], dtype=dtype)
    cosine = functional.angular_distance(x, y, backend="reference").cos()
    assert (x / 2 @ y.T).item() == sign * bound.item()  # exact: ‖y‖ rounds to 1
    assert cosine.item() == pytest.approx(sign * bound.item(), abs=1e-6)
    return x, y


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["at 1-δ", "at -1+δ"])
def test_cpp_gradient_at_the_clamp_bound_follows_torch_clamp(
    dtype: torch.dtype, sign: float
) -> None:
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    x, y = clamp_bound_pair(dtype, sign)
    grads = {}
    for backend in ("cpp", "reference"):
        xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = functional.angular_distance(xa, ya, backend=backend)
        grads[backend] = torch.autograd.grad(out.sum(), (xa, ya))
    for got, expected in zip(grads["cpp"], grads["reference"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # Both conventions, directly: the tangential gradient is ~1 with it and 0 without it.
    grad = torch.ones(1, 1, dtype=dtype)
    passing, _ = torch.ops.amc_kernels.angular_distance_bwd(grad, x, y, True, [True, True])
    blocked, _ = torch.ops.amc_kernels.angular_distance_bwd(grad, x, y, False, [True, True])
    assert passing[0, 1].abs().item() > 0.1
    assert torch.equal(blocked, torch.zeros_like(blocked))
    assert torch.equal(grads["cpp"][0], passing if CLAMP_GRAD_AT_BOUNDS else blocked)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 9),
    m=st.integers(0, 9),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    with_y=st.booleans(),
)
def test_cpp_property_matches_reference(n: int, m: int, d: int, seed: int, with_y: bool) -> None:
    x = rand(n, d, seed=seed)
    args = (x, rand(m, d, seed=seed + 1)) if with_y else (x,)
    leaves = [a.clone().requires_grad_() for a in args]
    got = cpp_angular(*leaves)
    expected = angular(*args)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if got.numel():
        weights = rand(*got.shape, seed=seed + 2)
        ref_leaves = [a.clone().requires_grad_() for a in args]
        grads = torch.autograd.grad((got * weights).sum(), leaves)
        ref_grads = torch.autograd.grad((angular(*ref_leaves) * weights).sum(), ref_leaves)
        for g, e in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    from amc_kernels import _dispatch

    for dtype in ALL_DTYPES:
        call = _dispatch.Call("angular_distance", torch.device("cpu"), dtype, ((4, 3),))
        assert _dispatch.select(call).backend == "cpp"
    x = rand(4, 3, seed=6)
    assert torch.equal(amc_kernels.angular_distance(x), cpp_angular(x))


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


LOW_PRECISION_CUDA = [
    pytest.param(dt, id=str(dt).split(".")[-1], marks=pytest.mark.cuda) for dt in LOW_PRECISION
]
EXACT_DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
]
TRITON_DTYPES = [*EXACT_DTYPES, *LOW_PRECISION_CUDA]


def beyond_one_tile(device: torch.device) -> int:
    """A batch larger than one row tile: 16 under the interpreter, 128 on GPUs."""
    return 37 if device.type == "cpu" else 300


def assert_triton_matches(x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Value and gradients against the reference under the low-precision rule."""
    ok, error, bound = compare_backend("angular_distance", "triton", (x, y), {})
    assert ok, f"error {error:.3g} above the bound {bound:.3g}"


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
    # Under the interpreter the fake-tensor checks would launch the interpreted kernel on fake
    # tensors (it copies arguments to host memory), so CPU runs the schema and autograd checks.
    utils = ("test_schema", "test_autograd_registration")
    if triton_device.type == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
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
        full = ops.angular_distance_bwd(grad, x, other, CLAMP_GRAD_AT_BOUNDS, [True, True])
        for mask in ([True, False], [False, True]):
            got = ops.angular_distance_bwd(grad, x, other, CLAMP_GRAD_AT_BOUNDS, mask)
            for wanted, g, f in zip(mask, got, full, strict=True):
                if wanted and f.numel():
                    assert torch.equal(g, f)
                else:
                    assert g.shape == (0,)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_torch_compile_fullgraph() -> None:
    x = rand(40, 16, seed=1).float().cuda().requires_grad_()
    y = rand(30, 16, seed=2).float().cuda().requires_grad_()

    @torch.compile(fullgraph=True)
    def total(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return amc_kernels.angular_distance(a, b, backend="triton").sum()

    got = total(x, y)
    grads = torch.autograd.grad(got, (x, y))
    expected = angular(x.double(), y.double()).sum()
    expected_grads = torch.autograd.grad(expected, (x, y))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.angular_distance(x, backend="triton")
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward.*angular_distance_triton_bwd"):
        grad.sum().backward()
