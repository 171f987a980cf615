"""amc_loss (docs/design.md#22-amc_loss): closed forms, a numpy oracle, gradients, dtypes,
validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import (
    SEEDS,
    assert_bad_input_raises,
    assert_low_precision_rule,
    sizes,
    unless_cpp_is_refused,
)
from conftest import DTYPE_IDS, ZERO_FP16, f64, kind_and_dtype, longs, rand, rand_labels
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import functional

DELTA = 1e-7
SELF_ANGLE = math.acos(1 - DELTA)
ANTIPODAL = math.acos(-1 + DELTA)
PAIRS = ("all", "halves")
REDUCTIONS = ("mean", "sum", "none")


def amc(features: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return functional.amc_loss(features, labels, backend="reference", **kwargs)


# The numpy oracle: docs/design.md#22-amc_loss with plain loops in float64, independent of
# amc_kernels.


def np_angle(u: np.ndarray, v: np.ndarray) -> float:
    u = u / max(math.sqrt(float(np.dot(u, u))), 1e-12)
    v = v / max(math.sqrt(float(np.dot(v, v))), 1e-12)
    return math.acos(min(max(float(np.dot(u, v)), -1 + DELTA), 1 - DELTA))


def np_amc(features: np.ndarray, labels: list, margin: float, pairs: str, reduction: str):
    n = len(features)

    def loss(i: int, j: int) -> float:
        theta = np_angle(features[i], features[j])
        return theta**2 if labels[i] == labels[j] else max(0.0, margin - theta) ** 2

    if pairs == "halves":
        half = n // 2
        values = [loss(k, k + half) for k in range(half)]
    else:
        values = [loss(i, j) for i in range(n) for j in range(i + 1, n)]
        if reduction == "none":
            per_anchor = []
            for i in range(n):
                total = sum(loss(i, j) for j in range(n) if j != i)
                per_anchor.append(total / (n - 1) if n > 1 else 0.0)
            return np.array(per_anchor)
    if reduction == "none":
        return np.array(values)
    if reduction == "sum":
        return float(sum(values))
    return float(sum(values)) / len(values) if values else 0.0


def check_oracle(features: torch.Tensor, labels: torch.Tensor, margin: float, pairs: str) -> None:
    for reduction in REDUCTIONS:
        got = amc(features, labels, margin=margin, pairs=pairs, reduction=reduction)
        expected = np_amc(features.numpy(), labels.tolist(), margin, pairs, reduction)
        expected = torch.as_tensor(expected, dtype=torch.float64)
        assert got.shape == expected.shape, (reduction, got.shape, expected.shape)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# --- closed form ---


def test_halves_identical_positive_pair_costs_the_clamp_angle() -> None:
    # θ = acos(1 − 1e-7) (the clamp), S = 1: ℓ = θ² ≈ 2.0e-7.
    got = amc(f64([[1.0, 2.0], [2.0, 4.0]]), longs([3, 3]), pairs="halves")
    assert abs(got.item() - SELF_ANGLE**2) < 1e-12
    assert abs(SELF_ANGLE**2 - 2.0e-7) < 1e-13


def test_halves_orthogonal_negative_pair_inside_and_outside_the_margin() -> None:
    x, labels = f64([[1.0, 0.0], [0.0, 5.0]]), longs([0, 1])
    # θ = π/2, S = 0, m = 2: ℓ = (2 − π/2)² ≈ 0.18425.
    assert abs(amc(x, labels, margin=2.0, pairs="halves").item() - (2 - math.pi / 2) ** 2) < 1e-12
    # m = 1 < π/2: the hinge is inactive, ℓ = 0.
    assert amc(x, labels, margin=1.0, pairs="halves").item() == 0.0


def test_antipodal_positive_pair() -> None:
    # cos = −1 → clamp → θ = acos(−1 + 1e-7) ≈ π − 4.47e-4; S = 1: ℓ = θ².
    got = amc(f64([[1.0, -1.0], [-3.0, 3.0]]), longs([1, 1]), pairs="all", reduction="sum")
    assert abs(got.item() - ANTIPODAL**2) < 1e-12


def test_zero_vector_is_half_pi_from_its_partner() -> None:
    # x̂_0 = 0: θ = π/2 for both pairs. S_01 = 1 → (π/2)²; S_02 = 0, m = 2 → (2 − π/2)²;
    # θ_12 = π/4, S = 0 → (2 − π/4)². Sum of the three pairs.
    x = f64([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    got = amc(x, longs([0, 0, 1]), margin=2.0, reduction="sum")
    expected = (math.pi / 2) ** 2 + (2 - math.pi / 2) ** 2 + (2 - math.pi / 4) ** 2
    assert abs(got.item() - expected) < 1e-12


def test_halves_odd_batch_ignores_the_last_sample() -> None:
    # N = 5: pairs (0, 2) and (1, 3). (0, 2): θ = π/2, S = 1 → (π/2)²; (1, 3): θ = π/4, S = 0,
    # m = 1 → (1 − π/4)². Mean of the two; sample 4 is unused whatever it holds.
    x = f64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [7.0, -3.0]])
    labels = longs([0, 0, 0, 1, 0])
    expected = ((math.pi / 2) ** 2 + (1 - math.pi / 4) ** 2) / 2
    assert abs(amc(x, labels, margin=1.0, pairs="halves").item() - expected) < 1e-12
    x[4], labels[4] = torch.tensor([-1.0, 0.0]), 9
    assert abs(amc(x, labels, margin=1.0, pairs="halves").item() - expected) < 1e-12
    none = amc(x, labels, margin=1.0, pairs="halves", reduction="none")
    torch.testing.assert_close(
        none, f64([(math.pi / 2) ** 2, (1 - math.pi / 4) ** 2]), rtol=0, atol=1e-12
    )


def test_all_pairs_sum_and_per_anchor_by_hand() -> None:
    # Angles 0, 0.3, π/2 with labels 0, 0, 1 and m = 1.5 (the closed-form case of testing.py):
    # ℓ01 = 0.3², ℓ02 = max(0, 1.5 − π/2)² = 0, ℓ12 = (1.5 − (π/2 − 0.3))².
    # r_0 = (ℓ01 + ℓ02)/2, r_1 = (ℓ01 + ℓ12)/2, r_2 = (ℓ02 + ℓ12)/2; sum = ℓ01 + ℓ02 + ℓ12.
    x = f64([[1.0, 0.0], [math.cos(0.3), math.sin(0.3)], [0.0, 1.0]])
    labels = longs([0, 0, 1])
    l01, l02, l12 = 0.09, 0.0, (1.5 - (math.pi / 2 - 0.3)) ** 2
    got_sum = amc(x, labels, margin=1.5, reduction="sum")
    assert abs(got_sum.item() - (l01 + l02 + l12)) < 1e-12
    got_none = amc(x, labels, margin=1.5, reduction="none")
    expected = f64([(l01 + l02) / 2, (l01 + l12) / 2, (l02 + l12) / 2])
    torch.testing.assert_close(got_none, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pairs", ["all", "halves"])
def test_numpy_oracle_on_random_inputs(pairs: str) -> None:
    shapes = [(2, 3, 2), (5, 4, 3), (8, 16, 2), (9, 5, 4), (4, 2, 1), (1, 3, 1)]
    for seed, (n, d, classes) in enumerate(shapes):
        x, labels = rand(n, d, seed=seed), rand_labels(n, classes, seed=seed)
        for margin in (0.5, 1.7, 3.0):
            check_oracle(x, labels, margin, pairs)


# --- equivalences and properties ---


@pytest.mark.parametrize("pairs", ["all", "halves"])
@pytest.mark.parametrize("n", [2, 7, 10])
def test_none_mean_equals_mean(pairs: str, n: int) -> None:
    x, labels = rand(n, 6, seed=n), rand_labels(n, 3, seed=n)
    mean = amc(x, labels, margin=1.2, pairs=pairs)
    none = amc(x, labels, margin=1.2, pairs=pairs, reduction="none")
    assert none.shape == ((n,) if pairs == "all" else (n // 2,))
    assert mean.item() > 0
    torch.testing.assert_close(none.mean(), mean, rtol=1e-13, atol=0)


@pytest.mark.parametrize("n", [2, 6, 9])
def test_sum_is_mean_times_pairs_and_per_anchor_relation(n: int) -> None:
    x, labels = rand(n, 5, seed=50 + n), rand_labels(n, 2, seed=n)
    mean, total = amc(x, labels), amc(x, labels, reduction="sum")
    none = amc(x, labels, reduction="none")
    torch.testing.assert_close(total, mean * (n * (n - 1) // 2), rtol=1e-13, atol=0)
    # Σ_i r_i · (N − 1) counts every unordered pair twice.
    torch.testing.assert_close(none.sum() * (n - 1), 2 * total, rtol=1e-13, atol=0)
    half_total = amc(x, labels, pairs="halves", reduction="sum")
    torch.testing.assert_close(
        half_total, amc(x, labels, pairs="halves") * (n // 2), rtol=1e-13, atol=0
    )


def test_halves_equals_all_pairs_restricted_to_those_pairs() -> None:
    n, half = 9, 4
    x, labels = rand(n, 5, seed=61), rand_labels(n, 2, seed=61)
    none = amc(x, labels, margin=1.3, pairs="halves", reduction="none")
    for k in range(half):
        idx = [k, k + half]
        single = amc(x[idx], labels[idx], margin=1.3, pairs="all", reduction="sum")
        torch.testing.assert_close(none[k], single, rtol=0, atol=1e-14)


def test_all_pairs_matches_the_formula_on_angular_distance() -> None:
    # ℓ_ij from the public angular_distance matrix, summed over i < j.
    x, labels, margin = rand(7, 4, seed=62), rand_labels(7, 3, seed=62), 1.1
    theta = functional.angular_distance(x, backend="reference")
    same = labels[:, None] == labels[None, :]
    ell = torch.where(same, theta**2, (margin - theta).clamp_min(0) ** 2)
    expected = ell.triu(diagonal=1).sum()
    got = amc(x, labels, margin=margin, reduction="sum")
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)


def test_invariances_scale_permutation_and_label_names() -> None:
    x, labels = rand(8, 5, seed=63), rand_labels(8, 3, seed=63)
    base = amc(x, labels, margin=1.4, reduction="none")
    scale = rand(8, 1, seed=64).abs() + 0.05
    torch.testing.assert_close(amc(x * scale, labels, margin=1.4, reduction="none"), base)
    assert torch.equal(amc(x * 4.0, labels, margin=1.4, reduction="none"), base)
    torch.testing.assert_close(amc(x * 1e-9, labels, margin=1.4, reduction="none"), base)
    torch.testing.assert_close(amc(x, labels * 10 - 3, margin=1.4, reduction="none"), base)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    permuted = amc(x[perm], labels[perm], margin=1.4, reduction="none")
    torch.testing.assert_close(permuted, base[perm], rtol=1e-13, atol=1e-15)


def test_all_distinct_labels_only_hinge_terms() -> None:
    # With every label distinct there is no positive pair: orthogonal rows and m < π/2 give 0.
    x = torch.eye(4, dtype=torch.float64) * 3
    assert amc(x, longs([0, 1, 2, 3]), margin=1.5).item() == 0.0
    # With m > π/2 every pair costs (m − π/2)².
    got = amc(x, longs([0, 1, 2, 3]), margin=2.5)
    assert abs(got.item() - (2.5 - math.pi / 2) ** 2) < 1e-12


@settings(max_examples=20, deadline=None)
@given(
    **sizes(n=(0, 9), d=(1, 6), classes=(1, 4)),
    margin=st.floats(0.05, 3.5),
    pairs=st.sampled_from(["all", "halves"]),
    seed=SEEDS,
)
def test_property_matches_numpy_oracle(
    n: int, d: int, classes: int, margin: float, pairs: str, seed: int
) -> None:
    check_oracle(rand(n, d, seed=seed), rand_labels(n, classes, seed=seed), margin, pairs)


# --- gradients ---


@pytest.mark.parametrize("pairs", ["all", "halves"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(pairs: str, reduction: str) -> None:
    x = rand(6, 4, seed=71).requires_grad_()
    labels = longs([0, 1, 0, 0, 1, 1])
    assert torch.autograd.gradcheck(
        lambda f: amc(f, labels, margin=2.0, pairs=pairs, reduction=reduction), (x,)
    )


SPECIAL = {
    # duplicates (θ → 0) with the same and with different labels
    "identical": (
        [[1.0, 2.0, -1.0], [1.0, 2.0, -1.0], [1.0, 2.0, -1.0], [0.5, 0.25, 0.0]],
        [0, 0, 1, 1],
    ),
    # antipodal rows (θ → π)
    "antipodal": (
        [[1.0, 2.0, -1.0], [0.5, 0.25, 0.0], [-1.0, -2.0, 1.0], [-2.0, -1.0, 0.0]],
        [0, 0, 0, 1],
    ),
    # zero rows (x̂ = 0), with a partner of the same label so that the gradient is not trivial
    "zero": ([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [0.5, 0.25, 0.0]], [0, 1, 1, 0]),
}


@kind_and_dtype(SPECIAL, ZERO_FP16)
def test_gradients_are_finite_at_special_vectors(kind: str, dtype: torch.dtype) -> None:
    rows, labels = SPECIAL[kind]
    for pairs in ("all", "halves"):
        for reduction in ("mean", "none"):
            x = torch.tensor(rows, dtype=dtype, requires_grad=True)
            out = amc(x, longs(labels), margin=2.0, pairs=pairs, reduction=reduction)
            assert bool(torch.isfinite(out).all())
            weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
            (grad,) = torch.autograd.grad((out * weights).sum(), x)
            assert grad.dtype == dtype
            assert bool(torch.isfinite(grad).all()), (pairs, reduction, grad)


def test_gradient_vanishes_for_clamped_pairs() -> None:
    # Identical rows sit on the clamp: neither θ² nor the hinge passes a gradient through it.
    x = torch.tensor([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    for labels in ([0, 0], [0, 1]):
        (grad,) = torch.autograd.grad(amc(x, longs(labels), margin=2.0, pairs="halves"), x)
        assert torch.equal(grad, torch.zeros_like(grad))


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_result_dtype(dtype: torch.dtype, reduction: str) -> None:
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    x, labels = rand(5, 4, dtype=dtype), longs([0, 1, 0, 1, 1])
    for pairs in ("all", "halves"):
        assert amc(x, labels, pairs=pairs, reduction=reduction).dtype == expected


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float16, 1e-5), (torch.bfloat16, 1e-5), (torch.float32, 1e-5)],
    ids=["float16", "bfloat16", "float32"],
)
def test_low_precision_rule_on_the_reference(dtype: torch.dtype, tolerance: float) -> None:
    x, labels = rand(9, 8, seed=81, dtype=dtype), rand_labels(9, 3, seed=81)
    low = amc(x, labels, margin=1.5, reduction="none")
    exact = amc(x.double(), labels, margin=1.5, reduction="none")
    # fp32 arithmetic on the rounded inputs: the only error is the fp32 compute.
    assert_low_precision_rule(low, exact, dtype, tolerance)


@pytest.mark.parametrize("pairs", ["all", "halves"])
def test_empty_batch(pairs: str, device: torch.device) -> None:
    x = torch.zeros(0, 4, dtype=torch.float32, device=device, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=device)
    for reduction in ("mean", "sum"):
        out = amc(x, labels, pairs=pairs, reduction=reduction)
        assert out.shape == () and out.item() == 0.0 and out.device == x.device
        (grad,) = torch.autograd.grad(out, x)
        assert grad.shape == (0, 4)
    assert amc(x, labels, pairs=pairs, reduction="none").shape == (0,)


def test_single_sample() -> None:
    x, labels = f64([[1.0, 2.0]]).requires_grad_(), longs([0])
    for pairs in ("all", "halves"):
        for reduction in ("mean", "sum"):
            out = amc(x, labels, pairs=pairs, reduction=reduction)
            assert out.item() == 0.0
            (grad,) = torch.autograd.grad(out, x)
            assert torch.equal(grad, torch.zeros_like(grad))
    # "all": one anchor with no partner, r_0 = 0; "halves": no pair at all.
    assert torch.equal(amc(x, labels, reduction="none"), f64([0.0]))
    assert amc(x, labels, pairs="halves", reduction="none").shape == (0,)


def test_output_is_on_the_input_device(device: torch.device) -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], device=device)
    labels = torch.tensor([0, 0, 1], device=device)
    for reduction in REDUCTIONS:
        out = amc(x, labels, margin=2.0, reduction=reduction)
        assert out.device == x.device
    # Pairs: (0,1) θ = π/2, S = 1 → (π/2)²; (0,2), (1,2) θ = π/4, S = 0 → (2 − π/4)² each.
    expected = ((math.pi / 2) ** 2 + 2 * (2 - math.pi / 4) ** 2) / 3
    assert abs(amc(x, labels, margin=2.0).item() - expected) < 1e-5


# --- validation ---

FEATURES = rand(4, 3)
LABELS = longs([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": [[1.0, 2.0]]}, TypeError, "features must be a torch.Tensor"),
        (
            {"features": torch.ones(4, 3, dtype=torch.int64)},
            TypeError,
            "features must be a floating",
        ),
        ({"features": torch.ones(4)}, ValueError, r"features must have shape \[N, D\]"),
        ({"features": torch.ones(4, 2, 3)}, ValueError, r"features must have shape \[N, D\]"),
        ({"features": f64([[0.0, float("nan")]] * 4)}, ValueError, "features contains NaN"),
        ({"features": f64([[float("inf"), 0.0]] * 4)}, ValueError, "features contains NaN or inf"),
        ({"labels": [0, 1, 0, 1]}, TypeError, "labels must be a torch.Tensor"),
        ({"labels": f64([0, 1, 0, 1])}, TypeError, "labels must be an integer tensor"),
        (
            {"labels": torch.tensor([True, False, True, False])},
            TypeError,
            "labels must be an integer",
        ),
        ({"labels": longs([[0, 1, 0, 1]])}, ValueError, r"labels must have shape \[N\]"),
        (
            {"labels": longs([0, 1, 0])},
            ValueError,
            "labels has size 3 in dimension 0 but must have 4",
        ),
        ({"labels": LABELS.to("meta")}, ValueError, "labels is on meta but features is on cpu"),
        ({"margin": 0.0}, ValueError, "margin must be > 0"),
        ({"margin": -0.5}, ValueError, "margin must be > 0"),
        ({"margin": float("nan")}, ValueError, "margin must be finite"),
        ({"margin": float("inf")}, ValueError, "margin must be finite"),
        ({"margin": "0.5"}, TypeError, "margin must be a real number"),
        ({"margin": True}, TypeError, "margin must be a real number"),
        ({"margin": None}, TypeError, "margin must be a real number"),
        ({"pairs": "half"}, ValueError, "pairs must be one of 'all', 'halves'"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of 'mean', 'sum', 'none'"),
        ({"reduction": None}, ValueError, "reduction must be one of"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    positional = {"features": FEATURES, "labels": LABELS}
    assert_bad_input_raises("amc_loss", positional, kwargs, error, match)


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = f64([[1.0, float("nan")], [0.0, 1.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    assert amc(x, longs([0, 0])).isnan().item()


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    for pairs in PAIRS:
        got = unless_cpp_is_refused(
            lambda p=pairs: amc_kernels.amc_loss(FEATURES, LABELS, pairs=p, backend="cpp")
        )
        if got is not None:
            torch.testing.assert_close(got, amc(FEATURES, LABELS, pairs=pairs))
