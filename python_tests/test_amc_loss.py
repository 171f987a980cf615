"""amc_loss (docs/design.md#22-amc_loss): closed forms, a numpy oracle, gradients, dtypes,
validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ALL_DTYPES, DTYPE_IDS, ZERO_FP16, f64, longs, needs_cpp, rand, rand_labels
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import BackendUnavailableError, functional
from amc_kernels.testing import FLOOR, compare_backend, within_reference_error

DELTA = 1e-7
SELF_ANGLE = math.acos(1 - DELTA)
ANTIPODAL = math.acos(-1 + DELTA)
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
    n=st.integers(0, 9),
    d=st.integers(1, 6),
    classes=st.integers(1, 4),
    margin=st.floats(0.05, 3.5),
    pairs=st.sampled_from(["all", "halves"]),
    seed=st.integers(0, 2**16),
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


@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_gradients_are_finite_at_special_vectors(
    kind: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    if kind == "zero" and dtype == torch.float16:
        request.applymarker(ZERO_FP16)
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
    error = (low.double() - exact).abs().max().item()
    assert error < tolerance
    ok, err, bound = within_reference_error(low, low, exact, FLOOR[dtype])
    assert ok and err == pytest.approx(error)
    ok, _, _ = within_reference_error(exact + 1.01 * bound + error, low, exact, FLOOR[dtype])
    assert not ok


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
    args = {"features": FEATURES, "labels": LABELS, "backend": "reference", **kwargs}
    with pytest.raises(error, match=match) as info:
        functional.amc_loss(args.pop("features"), args.pop("labels"), **args)
    assert "backend" in kwargs or str(info.value).startswith("amc_loss: ")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = f64([[1.0, float("nan")], [0.0, 1.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    assert amc(x, longs([0, 0])).isnan().item()


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    for pairs in ("all", "halves"):
        try:
            got = amc_kernels.amc_loss(FEATURES, LABELS, pairs=pairs, backend="cpp")
        except BackendUnavailableError as error:
            assert "'cpp'" in str(error) and "reference: usable" in str(error)
        else:
            torch.testing.assert_close(got, amc(FEATURES, LABELS, pairs=pairs))


# --- cpp backend ---

PAIRS = ("all", "halves")


def cpp_amc(features: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return functional.amc_loss(features, labels, backend="cpp", **kwargs)


def assert_matches_reference(x: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
    from amc_kernels.testing import compare_backend

    ok, error, bound = compare_backend("amc_loss", "cpp", (x, labels), kwargs)
    assert ok, f"cpp error {error:.3g} above the bound {bound:.3g}"


def value_and_grad(
    backend: str, x: torch.Tensor, labels: torch.Tensor, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = functional.amc_loss(leaf, labels, backend=backend, **kwargs)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out.detach(), grad


def assert_same_as_reference_fp64(x: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
    got = value_and_grad("cpp", x, labels, **kwargs)
    expected = value_and_grad("reference", x, labels, **kwargs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_all_pairs_over_many_tiles(threads: int) -> None:
    # The tiling follows the thread count: for N = 300, 1 thread → 2 tiles of 160 rows (3 tile
    # pairs, one run); 3 threads → 5 tiles of 64 with a partial last one (15 pairs, 3 runs with
    # their own accumulators).
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, labels = rand(300, 7, seed=threads), rand_labels(300, 4, seed=threads)
        for reduction in REDUCTIONS:
            assert_same_as_reference_fp64(x, labels, margin=1.7, reduction=reduction)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize(
    "label_dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
)
def test_cpp_labels_of_any_integer_dtype(label_dtype: torch.dtype) -> None:
    x = rand(9, 4, seed=3)
    values = [0, 3, 0, 7, 3, 3, 0, 7, 1] if label_dtype == torch.uint8 else [-5, 3, -5, 7, 3]
    labels = torch.tensor(values * 2, dtype=label_dtype)[:9]
    if label_dtype == torch.int64:
        labels = labels + 2**40  # beyond int32
    for pairs in PAIRS:
        for reduction in REDUCTIONS:
            kwargs = {"margin": 2.0, "pairs": pairs, "reduction": reduction}
            assert_same_as_reference_fp64(x, labels, **kwargs)


@pytest.mark.cpp
@needs_cpp
def test_cpp_no_positive_anchors() -> None:
    x = rand(11, 5, seed=4)
    labels = torch.arange(11)
    for pairs in PAIRS:
        for reduction in REDUCTIONS:
            kwargs = {"margin": 2.5, "pairs": pairs, "reduction": reduction}
            assert_same_as_reference_fp64(x, labels, **kwargs)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_cpp_special_vectors(kind: str, dtype: torch.dtype) -> None:
    rows, label_list = SPECIAL[kind]
    x, labels = torch.tensor(rows, dtype=dtype), longs(label_list)
    for pairs in PAIRS:
        for reduction in ("mean", "none"):
            kwargs = {"margin": 2.0, "pairs": pairs, "reduction": reduction}
            if kind == "zero" and dtype == torch.float16:
                # 1e12-scaled gradients of the zero rows overflow fp16 in both backends: the
                # same infinities, and the finite entries agree to fp16 rounding.
                got = value_and_grad("cpp", x, labels, **kwargs)[1]
                expected = value_and_grad("reference", x, labels, **kwargs)[1]
                torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-3)
                continue
            assert_matches_reference(x, labels, **kwargs)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["at 1-δ", "at -1+δ"])
def test_cpp_gradient_at_the_clamp_bound_follows_torch_clamp(
    dtype: torch.dtype, sign: float
) -> None:
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    # ⟨x̂_0, x̂_1⟩ = ±(1 − δ) exactly: θ sits on the clamp bound; equal labels give dℓ/dθ = 2θ.
    bound = torch.tensor(1 - DELTA, dtype=dtype)
    x = torch.stack(
        [torch.tensor([2.0, 0.0], dtype=dtype), torch.stack([sign * bound, (1 - bound**2).sqrt()])]
    )
    assert (x[0] / 2 @ x[1]).item() == sign * bound.item()
    labels = longs([4, 4])
    for pairs in PAIRS:
        got = value_and_grad("cpp", x, labels, pairs=pairs)
        expected = value_and_grad("reference", x, labels, pairs=pairs)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
        one = torch.ones((), dtype=dtype)
        args = (one, x, labels, 0.5, pairs, "mean")
        passing = torch.ops.amc_kernels.amc_loss_bwd(*args, True, [True])
        blocked = torch.ops.amc_kernels.amc_loss_bwd(*args, False, [True])
        # The tangential gradient of x_0 (‖x_0‖ = 2): −(2θ / sin θ)·sin θ / 2 = −θ at the bound.
        assert passing[0, 1].item() == pytest.approx(-math.acos(sign * bound.item()), rel=1e-3)
        assert torch.equal(blocked, torch.zeros_like(blocked))
        assert torch.equal(got[1], passing if CLAMP_GRAD_AT_BOUNDS else blocked)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("pairs", PAIRS)
def test_cpp_single_sample(pairs: str) -> None:
    # (empty batches: test_conformance.py::test_empty_batch)
    one = f64([[1.0, 2.0]]).requires_grad_()
    for reduction in ("mean", "sum"):
        out = cpp_amc(one, longs([0]), pairs=pairs, reduction=reduction)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, one)
        assert torch.equal(grad, torch.zeros_like(grad))
    expected_none = f64([0.0]) if pairs == "all" else f64([])
    assert torch.equal(cpp_amc(one, longs([0]), pairs=pairs, reduction="none"), expected_none)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 12),
    d=st.integers(1, 5),
    classes=st.integers(1, 4),
    margin=st.floats(0.05, 3.5),
    pairs=st.sampled_from(PAIRS),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_cpp_property_matches_reference(
    n: int, d: int, classes: int, margin: float, pairs: str, reduction: str, seed: int
) -> None:
    x, labels = rand(n, d, seed=seed), rand_labels(n, classes, seed=seed)
    assert_same_as_reference_fp64(x, labels, margin=margin, pairs=pairs, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    from amc_kernels import _dispatch

    for dtype in ALL_DTYPES:
        call = _dispatch.Call("amc_loss", torch.device("cpu"), dtype, ((4, 3), (4,)))
        assert _dispatch.select(call).backend == "cpp"
    x, labels = rand(6, 3, seed=6), longs([0, 1, 0, 1, 1, 0])
    assert torch.equal(amc_kernels.amc_loss(x, labels), cpp_amc(x, labels))


# --- triton backend ---

EXACT_DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
]
TRITON_DTYPES = [
    *EXACT_DTYPES,
    *[
        pytest.param(dt, id=str(dt).split(".")[-1], marks=pytest.mark.cuda)
        for dt in (torch.float16, torch.bfloat16)
    ],
]
PAIRS_REDUCTIONS = [(p, r) for p in ("all", "halves") for r in REDUCTIONS]


def beyond_one_tile(device: torch.device) -> int:
    """A batch larger than one row tile: 16 under the interpreter, 128 on GPUs."""
    return 37 if device.type == "cpu" else 300


def assert_triton_matches(features: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
    """Value and gradient against the reference under the low-precision rule."""
    ok, error, bound = compare_backend("amc_loss", "triton", (features, labels), kwargs)
    assert ok, f"{kwargs}: error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize(("pairs", "reduction"), PAIRS_REDUCTIONS)
def test_triton_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, pairs: str, reduction: str
) -> None:
    n = beyond_one_tile(triton_device)
    x = rand(n, 16, seed=81, dtype=dtype).to(triton_device)
    labels = rand_labels(n, 3, seed=81).to(triton_device)
    assert_triton_matches(x, labels, margin=1.0, pairs=pairs, reduction=reduction)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_triton_small_and_odd_batches(triton_device: torch.device, dtype: torch.dtype) -> None:
    for n in (0, 1, 2, 5):
        x = rand(n, 6, seed=n, dtype=dtype).to(triton_device)
        labels = rand_labels(n, 2, seed=n).to(triton_device)
        for pairs, reduction in PAIRS_REDUCTIONS:
            assert_triton_matches(x, labels, margin=2.0, pairs=pairs, reduction=reduction)


@pytest.mark.triton
def test_triton_streams_the_feature_axis_in_chunks(triton_device: torch.device) -> None:
    d = 40 if triton_device.type == "cpu" else 300  # three chunks / chunked on GPUs
    x = rand(11, d, seed=83).to(triton_device)
    labels = rand_labels(11, 3, seed=83).to(triton_device)
    for pairs, reduction in (("all", "mean"), ("all", "none"), ("halves", "none")):
        assert_triton_matches(x, labels, margin=1.6, pairs=pairs, reduction=reduction)


@pytest.mark.triton
def test_triton_non_contiguous_inputs_and_label_dtypes(triton_device: torch.device) -> None:
    x = rand(5, 18, seed=84).to(triton_device).T[::2]  # [9, 5], transposed and strided
    labels = rand_labels(18, 3, seed=84).to(triton_device)[::2]
    assert not (x.is_contiguous() or labels.is_contiguous())
    for label_dtype in (torch.int64, torch.int32, torch.uint8):
        for pairs in ("all", "halves"):
            assert_triton_matches(x, labels.to(label_dtype), margin=1.2, pairs=pairs)


@pytest.mark.triton
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_triton_special_vectors(triton_device: torch.device, kind: str) -> None:
    rows, labels = SPECIAL[kind]
    labels = longs(labels).to(triton_device)
    x = torch.tensor(rows, dtype=torch.float64, device=triton_device)
    for pairs, reduction in PAIRS_REDUCTIONS:
        assert_triton_matches(x, labels, margin=2.0, pairs=pairs, reduction=reduction)
    leaf = x.float().requires_grad_()
    out = functional.amc_loss(leaf, labels, margin=2.0, backend="triton")
    (grad,) = torch.autograd.grad(out, leaf)
    assert bool(torch.isfinite(out)) and bool(torch.isfinite(grad).all())


@pytest.mark.triton
def test_triton_gradient_vanishes_for_clamped_pairs(triton_device: torch.device) -> None:
    x = torch.tensor([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]], dtype=torch.float64)
    x = x.to(triton_device).requires_grad_()
    for labels in ([0, 0], [0, 1]):
        for pairs in ("all", "halves"):
            out = functional.amc_loss(
                x, longs(labels).to(triton_device), margin=2.0, pairs=pairs, backend="triton"
            )
            (grad,) = torch.autograd.grad(out, x)
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.triton
@pytest.mark.parametrize(
    ("pairs", "reduction"), [("all", "mean"), ("all", "none"), ("halves", "sum")]
)
def test_triton_gradcheck(triton_device: torch.device, pairs: str, reduction: str) -> None:
    x = rand(6, 4, seed=71).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 0, 1, 1]).to(triton_device)
    assert torch.autograd.gradcheck(
        lambda f: functional.amc_loss(
            f, labels, margin=2.0, pairs=pairs, reduction=reduction, backend="triton"
        ),
        (x,),
        fast_mode=True,
    )


@pytest.mark.triton
def test_triton_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import amc_loss as ops

    # Under the interpreter the fake-tensor checks would launch the interpreted kernel on fake
    # tensors (it copies arguments to host memory), so CPU runs the schema and autograd checks.
    utils = ("test_schema", "test_autograd_registration")
    if triton_device.type == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS

    x = rand(5, 4, seed=1).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 1, 1]).to(triton_device)
    for pairs, reduction in (("all", "mean"), ("all", "none"), ("halves", "none")):
        args = (x, labels, 1.0, pairs, reduction)
        torch.library.opcheck(ops.amc_loss_fwd, args, test_utils=utils)
        grad = torch.ones_like(ops.amc_loss_fwd(*args))
        for mask in ([True], [False]):
            bwd_args = (grad, x.detach(), *args[1:], CLAMP_GRAD_AT_BOUNDS, mask)
            torch.library.opcheck(ops.amc_loss_bwd, bwd_args, test_utils=utils)
        masked = ops.amc_loss_bwd(grad, x.detach(), *args[1:], CLAMP_GRAD_AT_BOUNDS, [False])
        assert masked.shape == (0,)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("pairs", ["all", "halves"])
def test_triton_torch_compile_fullgraph(pairs: str) -> None:
    x = rand(50, 16, seed=1).float().cuda().requires_grad_()
    labels = rand_labels(50, 4, seed=1).cuda()

    @torch.compile(fullgraph=True)
    def loss(f: torch.Tensor) -> torch.Tensor:
        return amc_kernels.amc_loss(f, labels, margin=1.0, pairs=pairs, backend="triton")

    got = loss(x)
    (grad,) = torch.autograd.grad(got, x)
    expected = amc(x.double(), labels, margin=1.0, pairs=pairs)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.amc_loss(x, longs([0, 1, 0, 1]).to(triton_device), backend="triton")
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward.*amc_loss_triton_bwd"):
        grad.sum().backward()
