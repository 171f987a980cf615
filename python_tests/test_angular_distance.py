"""angular_distance (docs/design.md#21-angular_distance): closed forms, a numpy oracle, gradients,
dtypes, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import (
    SEEDS,
    assert_bad_input_raises,
    assert_low_precision_rule,
    unless_cpp_is_refused,
)
from conftest import DTYPE_IDS, ZERO_FP16, f64, kind_and_dtype, rand
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import functional

DELTA = 1e-7
SELF_ANGLE = math.acos(1 - DELTA)  # θ of identical vectors: the clamp stops at 1 − 1e-7
ANTIPODAL = math.acos(-1 + DELTA)  # θ of opposite vectors: π − acos(1 − 1e-7)


def angular(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return functional.angular_distance(x, y, backend="reference")


def angular_cases(batch: int, features: int) -> dict[str, st.SearchStrategy]:
    """Hypothesis strategies of x [n, D] and y [m, D] (with_y) for n, m ≤ batch, D ≤ features."""
    rows = st.integers(0, batch)
    return dict(n=rows, m=rows, d=st.integers(1, features), seed=SEEDS, with_y=st.booleans())


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
@given(**angular_cases(6, 5))
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


@kind_and_dtype(SPECIAL, ZERO_FP16)
def test_gradients_are_finite_at_special_vectors(kind: str, dtype: torch.dtype) -> None:
    xs, ys = SPECIAL[kind]
    x = torch.tensor(xs, dtype=dtype)
    y = None if ys is None else torch.tensor(ys, dtype=dtype)
    for grad in _grad(x, y) + _grad(x, None):
        assert grad.dtype == dtype
        assert bool(torch.isfinite(grad).all()), grad


@pytest.mark.parametrize("dtype", DTYPE_IDS)
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


@pytest.mark.parametrize("dtype", DTYPE_IDS)
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
    # Rounding is visible but small (fp32 compute, rounded output).
    assert assert_low_precision_rule(low, exact, dtype, tolerance) > 0


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
    assert_bad_input_raises("angular_distance", {"x": X, "y": None}, kwargs, error, match)


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = f64([[1.0, float("nan")], [0.0, 1.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    out = functional.angular_distance(x, backend="reference")
    assert bool(out[0].isnan().all()) and not bool(out[1, 1].isnan())


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    got = unless_cpp_is_refused(lambda: amc_kernels.angular_distance(X, backend="cpp"))
    if got is not None:
        torch.testing.assert_close(got, angular(X), rtol=0, atol=1e-12)
