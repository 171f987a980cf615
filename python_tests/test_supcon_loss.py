"""supcon_loss (docs/design.md#23-supcon_loss): closed forms, a numpy oracle, gradients, dtypes,
validation."""

from __future__ import annotations

import itertools
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
from conftest import DTYPE_IDS, ZERO_FP16, f64, kind_and_dtype, longs, rand, rand_labels
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import functional

REDUCTIONS = ("mean", "sum", "none")
E = math.e


def supcon(features: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    return functional.supcon_loss(features, labels, backend="reference", **kwargs)


def close(got: torch.Tensor, expected: float) -> None:
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-12, (got.item(), expected)


# The numpy oracle: docs/design.md#23-supcon_loss (SupContrast losses.py at HEAD) with plain loops
# in float64.


def np_supcon(
    features: np.ndarray,
    labels: list | None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    negatives: np.ndarray | None = None,
    normalize: bool = True,
    reduction: str = "mean",
):
    feats = features[:, None, :] if features.ndim == 2 else features
    n, views, _ = feats.shape

    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(math.sqrt(float(np.dot(v, v))), 1e-12) if normalize else v

    # Contrast rows, view-major: row v·N + i is view v of sample i; then the negatives.
    rows = [unit(feats[i, v]) for v in range(views) for i in range(n)]
    sample = [i for v in range(views) for i in range(n)]
    group = sample if labels is None else [labels[i] for i in sample]
    columns = rows + ([] if negatives is None else [unit(m) for m in negatives])
    anchors = range(views * n) if contrast_mode == "all" else range(n)

    losses = []
    for a in anchors:
        logits = [float(np.dot(rows[a], c)) / temperature for c in columns]
        others = [c for c in range(len(columns)) if c != a]
        positives = [c for c in range(views * n) if c != a and group[c] == group[a]]
        if not positives:
            losses.append(0.0)  # no positive: contributes 0, still counts in the mean
            continue
        top = max(logits[c] for c in others)
        log_denominator = top + math.log(sum(math.exp(logits[c] - top) for c in others))
        mean_log_prob = sum(logits[c] - log_denominator for c in positives) / len(positives)
        losses.append(-(temperature / base_temperature) * mean_log_prob)
    if reduction == "none":
        return np.array(losses)
    if reduction == "sum":
        return float(sum(losses))
    return float(sum(losses)) / len(losses) if losses else 0.0


def check_oracle(features, labels, negatives=None, **kwargs) -> None:
    for reduction in REDUCTIONS:
        got = supcon(features, labels, negatives=negatives, reduction=reduction, **kwargs)
        expected = np_supcon(
            features.numpy(),
            None if labels is None else labels.tolist(),
            negatives=None if negatives is None else negatives.numpy(),
            reduction=reduction,
            **kwargs,
        )
        expected = torch.as_tensor(expected, dtype=torch.float64)
        assert got.shape == expected.shape, (reduction, got.shape, expected.shape)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


#: Hypothesis strategies of a supcon_loss call, shared by the property tests (each adds n).
SUPCON_CASES = dict(
    views=st.integers(1, 3),
    d=st.integers(1, 5),
    classes=st.one_of(st.none(), st.integers(1, 4)),
    m=st.one_of(st.none(), st.integers(0, 3)),
    mode=st.sampled_from(["all", "one"]),
    normalize=st.booleans(),
    temperature=st.floats(0.05, 2.0),
    seed=SEEDS,
)


def supcon_inputs(n: int, views: int, d: int, classes: int | None, m: int | None, seed: int):
    """Seeded (features [N, V, D], labels of `classes` or None, negatives [M, D] or None)."""
    x = rand(n, views, d, seed=seed)
    labels = None if classes is None else rand_labels(n, classes, seed=seed)
    return x, labels, None if m is None else rand(m, d, seed=seed + 1)


# --- closed form ---


def two_views() -> torch.Tensor:
    # Sample 0: both views e1; sample 1: both views e2. Contrast rows (view-major): e1, e2, e1, e2.
    return f64([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])


def test_simclr_two_views_by_hand() -> None:
    # T = T_base = 1. Anchor e1 (row 0): non-self logits e2 → 0, e1 → 1 (the positive), e2 → 0;
    # loss = −(1 − log(e⁰ + e¹ + e⁰)) = log(2 + e) − 1. All four anchors alike.
    got = supcon(two_views(), temperature=1.0, base_temperature=1.0)
    close(got, math.log(2 + E) - 1)
    none = supcon(two_views(), temperature=1.0, base_temperature=1.0, reduction="none")
    torch.testing.assert_close(none, f64([math.log(2 + E) - 1] * 4), rtol=0, atol=1e-12)
    total = supcon(two_views(), temperature=1.0, base_temperature=1.0, reduction="sum")
    close(total, 4 * (math.log(2 + E) - 1))


def test_temperature_and_base_temperature_factor_by_hand() -> None:
    # T = 0.5: logits 2 for the positive, 0 for the others: log(2 + e²) − 2, times T/T_base.
    close(supcon(two_views(), temperature=0.5, base_temperature=0.5), math.log(2 + E**2) - 2)
    halved = supcon(two_views(), temperature=0.5, base_temperature=1.0)
    close(halved, 0.5 * (math.log(2 + E**2) - 2))


def test_contrast_mode_one_by_hand() -> None:
    # Anchors are view 0 only (rows 0 and 1); each is as above: mean unchanged, sum over 2.
    kwargs = {"temperature": 1.0, "base_temperature": 1.0, "contrast_mode": "one"}
    close(supcon(two_views(), **kwargs), math.log(2 + E) - 1)
    close(supcon(two_views(), reduction="sum", **kwargs), 2 * (math.log(2 + E) - 1))
    assert supcon(two_views(), reduction="none", **kwargs).shape == (2,)


def test_negatives_enter_only_the_denominators_by_hand() -> None:
    # Add the negative −3·e1 (normalised to −e1): anchor e1 gets an extra e⁻¹, anchor e2 an e⁰:
    # e1 anchors: log(2 + e + e⁻¹) − 1; e2 anchors: log(3 + e) − 1. The negative is no anchor.
    negatives = f64([[-3.0, 0.0]])
    kwargs = {"temperature": 1.0, "base_temperature": 1.0, "negatives": negatives}
    a, b = math.log(2 + E + 1 / E) - 1, math.log(3 + E) - 1
    none = supcon(two_views(), reduction="none", **kwargs)
    torch.testing.assert_close(none, f64([a, b, a, b]), rtol=0, atol=1e-12)
    close(supcon(two_views(), **kwargs), (a + b) / 2)


def test_supervised_positives_span_samples_by_hand() -> None:
    # V = 1, labels 0, 0, 0: z = e1, e1, e2 with T = T_base = 1.
    # Anchor 0: positives rows 1 (logit 1) and 2 (logit 0), denominator e¹ + e⁰:
    #   −((1 − log(1+e)) + (0 − log(1+e)))/2 = log(1+e) − 1/2; anchor 1 the same;
    # anchor 2: positives with logits 0, 0 and denominator 2: log 2.
    x = f64([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    none = supcon(x, longs([0, 0, 0]), temperature=1.0, base_temperature=1.0, reduction="none")
    expected = [math.log(1 + E) - 0.5, math.log(1 + E) - 0.5, math.log(2)]
    torch.testing.assert_close(none, f64(expected), rtol=0, atol=1e-12)


def test_normalize_false_uses_raw_dot_products_by_hand() -> None:
    # Unnormalised z = 2·e1, e1, e2 with labels 0, 0, 1 and T = T_base = 1: anchor 0 has logits
    # 2 (positive) and 0: log(e² + 1) − 2; anchor 1: logits 2 (positive) and 0, same;
    # anchor 2 has no positive: 0. Mean over 3 anchors.
    x = f64([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = supcon(x, longs([0, 0, 1]), temperature=1.0, base_temperature=1.0, normalize=False)
    close(got, 2 * (math.log(E**2 + 1) - 2) / 3)


def test_anchors_without_positive_count_in_the_mean() -> None:
    # V = 1 and singleton labels: no anchor has a positive, every loss is 0 (not NaN).
    x = f64([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    none = supcon(x, longs([0, 1, 2]), reduction="none")
    assert torch.equal(none, torch.zeros(3, dtype=torch.float64))
    # One positive pair among 4 anchors: the mean divides by 4, not by 2.
    x = f64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = longs([0, 0, 1, 2])
    none = supcon(x, labels, temperature=1.0, base_temperature=1.0, reduction="none")
    # Anchor 0: positive row 1 (logit 1), others 0 and −1: log(e + 1 + e⁻¹) − 1.
    pair = math.log(E + 1 + 1 / E) - 1
    torch.testing.assert_close(none, f64([pair, pair, 0.0, 0.0]), rtol=0, atol=1e-12)
    close(supcon(x, labels, temperature=1.0, base_temperature=1.0), pair / 2)


ORACLE_GRID = list(
    itertools.product(
        (1, 2, 3),  # views
        ("all", "one"),  # contrast_mode
        (False, True),  # labels
        (False, True),  # negatives
        (True, False),  # normalize
    )
)


@pytest.mark.parametrize(
    ("views", "mode", "with_labels", "with_negatives", "normalize"),
    ORACLE_GRID,
    ids=[
        f"V{v}-{m}-{'lab' if lab else 'nolab'}-{'neg' if n else 'noneg'}-{'norm' if z else 'raw'}"
        for v, m, lab, n, z in ORACLE_GRID
    ],
)
def test_numpy_oracle_on_random_inputs(
    views: int, mode: str, with_labels: bool, with_negatives: bool, normalize: bool
) -> None:
    for seed, (n, d) in enumerate([(5, 4), (2, 3)]):
        shape = (n, d) if views == 1 and seed == 0 else (n, views, d)  # [N, D] form for V = 1
        x = rand(*shape, seed=seed + 10 * views) * (1.0 if normalize else 0.5)
        labels = rand_labels(n, 2, seed=seed) if with_labels else None
        negatives = rand(3, d, seed=seed + 99) if with_negatives else None
        check_oracle(
            x,
            labels,
            negatives,
            temperature=0.2 + 0.3 * seed,
            base_temperature=0.07,
            contrast_mode=mode,
            normalize=normalize,
        )


# --- equivalences and properties ---


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_labels_none_equals_labels_arange(views: int, mode: str) -> None:
    x, negatives = rand(6, views, 5, seed=views), rand(2, 5, seed=40)
    for reduction in REDUCTIONS:
        kwargs = {"contrast_mode": mode, "negatives": negatives, "reduction": reduction}
        simclr = supcon(x, None, **kwargs)
        torch.testing.assert_close(simclr, supcon(x, torch.arange(6), **kwargs), rtol=0, atol=0)
        assert views == 1 or bool((simclr > 0).all())


def test_none_mean_and_sum_are_consistent() -> None:
    x, labels = rand(7, 2, 4, seed=3), rand_labels(7, 3, seed=3)
    for mode, anchors in (("all", 14), ("one", 7)):
        none = supcon(x, labels, contrast_mode=mode, reduction="none")
        assert none.shape == (anchors,)
        torch.testing.assert_close(
            none.mean(), supcon(x, labels, contrast_mode=mode), rtol=1e-14, atol=0
        )
        torch.testing.assert_close(
            none.sum(), supcon(x, labels, contrast_mode=mode, reduction="sum"), rtol=1e-14, atol=0
        )


def test_base_temperature_is_a_pure_factor() -> None:
    x, labels = rand(6, 2, 5, seed=4), rand_labels(6, 2, seed=4)
    plain = supcon(x, labels, temperature=0.3, base_temperature=0.3)
    scaled = supcon(x, labels, temperature=0.3, base_temperature=0.07)
    torch.testing.assert_close(scaled, plain * (0.3 / 0.07), rtol=1e-13, atol=0)


def test_normalize_true_is_invariant_to_feature_scale() -> None:
    x, labels, negatives = rand(5, 2, 4, seed=5), rand_labels(5, 2, seed=5), rand(3, 4, seed=6)
    base = supcon(x, labels, negatives=negatives, reduction="none")
    scale = (rand(5, 2, 1, seed=7).abs() + 0.1) * 1e-9  # tiny norms, still above the eps
    scaled = supcon(x * scale, labels, negatives=negatives * 7.5, reduction="none")
    torch.testing.assert_close(scaled, base, rtol=1e-12, atol=1e-12)
    # ...and equals normalize=False on pre-normalised rows; raw scaling does change the loss.
    unit = torch.nn.functional.normalize(x, dim=-1)
    unit_neg = torch.nn.functional.normalize(negatives, dim=-1)
    raw = supcon(unit, labels, negatives=unit_neg, normalize=False, reduction="none")
    torch.testing.assert_close(raw, base, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(supcon(3 * unit, labels, normalize=False), base.mean())


def test_mode_one_with_one_view_equals_mode_all() -> None:
    x, labels = rand(6, 4, seed=8), rand_labels(6, 2, seed=8)
    torch.testing.assert_close(
        supcon(x, labels, contrast_mode="one", reduction="none"),
        supcon(x, labels, reduction="none"),
        rtol=0,
        atol=0,
    )
    # [N, D] is the same as [N, 1, D].
    torch.testing.assert_close(supcon(x[:, None], labels), supcon(x, labels), rtol=0, atol=0)


def test_invariant_to_sample_order_and_negative_order() -> None:
    x, labels, negatives = rand(6, 2, 4, seed=9), rand_labels(6, 3, seed=9), rand(4, 4, seed=10)
    base = supcon(x, labels, negatives=negatives, reduction="none").reshape(2, 6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(2))
    got = supcon(x[perm], labels[perm], negatives=negatives.flip(0), reduction="none")
    torch.testing.assert_close(got.reshape(2, 6), base[:, perm], rtol=1e-12, atol=1e-13)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), base_temperature=st.floats(0.05, 2.0), **SUPCON_CASES)
def test_property_matches_numpy_oracle(
    n, views, d, classes, m, mode, normalize, temperature, base_temperature, seed
) -> None:
    check_oracle(
        *supcon_inputs(n, views, d, classes, m, seed),
        temperature=temperature,
        base_temperature=base_temperature,
        contrast_mode=mode,
        normalize=normalize,
    )


# --- gradients ---


@pytest.mark.parametrize(
    ("with_labels", "mode", "normalize"),
    [(True, "all", True), (False, "all", True), (True, "one", False), (False, "one", True)],
)
def test_gradcheck_features_and_negatives(with_labels: bool, mode: str, normalize: bool) -> None:
    x = rand(4, 2, 3, seed=21).requires_grad_()
    negatives = rand(2, 3, seed=22).requires_grad_()
    labels = longs([0, 1, 0, 0]) if with_labels else None
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda f, g, r=reduction: supcon(
                f,
                labels,
                negatives=g,
                temperature=0.5,
                contrast_mode=mode,
                normalize=normalize,
                reduction=r,
            ),
            (x, negatives),
        )


SPECIAL = {
    # duplicate views and samples (θ → 0)
    "identical": [[[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]], [[1.0, 2.0, -1.0], [0.5, 0.25, 0.0]]],
    # antipodal views (θ → π)
    "antipodal": [[[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], [[0.5, 0.25, 0.0], [-0.5, -0.25, 0.0]]],
    # zero views (ẑ = 0)
    "zero": [[[0.0, 0.0, 0.0], [1.0, 2.0, -1.0]], [[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]],
}


@kind_and_dtype(SPECIAL, ZERO_FP16)
def test_gradients_are_finite_at_special_vectors(kind: str, dtype: torch.dtype) -> None:
    for labels in (None, longs([0, 0])):
        for negatives in (None, torch.tensor([[1.0, 2.0, -1.0]], dtype=dtype)):
            x = torch.tensor(SPECIAL[kind], dtype=dtype, requires_grad=True)
            out = supcon(x, labels, negatives=negatives)
            assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert bool(torch.isfinite(out))
            (grad,) = torch.autograd.grad(out, x)
            assert grad.dtype == dtype
            assert bool(torch.isfinite(grad).all()), (labels, negatives, grad)


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
def test_result_dtype(dtype: torch.dtype) -> None:
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    x, negatives = rand(4, 2, 3, dtype=dtype), rand(2, 3, seed=1, dtype=dtype)
    for reduction in REDUCTIONS:
        assert supcon(x, negatives=negatives, reduction=reduction).dtype == expected
        assert supcon(x[:, 0], longs([0, 1, 0, 1]), reduction=reduction).dtype == expected


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["float16", "bfloat16", "float32"]
)
def test_low_precision_rule_on_the_reference(dtype: torch.dtype) -> None:
    x, labels = rand(8, 2, 16, seed=31, dtype=dtype), rand_labels(8, 3, seed=31)
    negatives = rand(4, 16, seed=32, dtype=dtype)
    low = supcon(x, labels, negatives=negatives, reduction="none")
    exact = supcon(x.double(), labels, negatives=negatives.double(), reduction="none")
    assert_low_precision_rule(low, exact, dtype, 1e-4)  # fp32 compute on the same rounded inputs


@pytest.mark.parametrize("mode", ["all", "one"])
def test_empty_batch(mode: str, device: torch.device) -> None:
    x = torch.zeros(0, 2, 4, device=device, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=device)
    negatives = torch.randn(3, 4, device=device)
    for lab, neg in itertools.product((None, labels), (None, negatives)):
        for reduction in ("mean", "sum"):
            out = supcon(x, lab, negatives=neg, contrast_mode=mode, reduction=reduction)
            assert out.shape == () and out.item() == 0.0 and out.device == x.device
            (grad,) = torch.autograd.grad(out, x)
            assert grad.shape == x.shape
        none = supcon(x, lab, negatives=neg, contrast_mode=mode, reduction="none")
        assert none.shape == (0,) and none.device == x.device


def test_single_sample_single_view_is_zero_not_nan() -> None:
    for shape in ((1, 3), (1, 1, 3)):
        x = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64).reshape(shape).requires_grad_()
        for labels in (None, longs([4])):
            out = supcon(x, labels)
            assert out.item() == 0.0
            (grad,) = torch.autograd.grad(out, x)
            assert torch.equal(grad, torch.zeros_like(grad))
            assert torch.equal(supcon(x, labels, reduction="none"), f64([0.0]))
    # With a negative it has a denominator but still no positive: 0.
    x = f64([[1.0, 0.0]])
    assert supcon(x, negatives=f64([[0.0, 1.0]]), reduction="none").tolist() == [0.0]


def test_output_is_on_the_input_device(device: torch.device) -> None:
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]], device=device)
    negatives = torch.tensor([[-1.0, 0.0]], device=device)
    labels = torch.tensor([0, 1], device=device)
    for reduction in REDUCTIONS:
        out = supcon(x, labels, negatives=negatives, reduction=reduction)
        assert out.device == x.device
    got = supcon(x, labels, temperature=1.0, base_temperature=1.0)
    assert abs(got.item() - (math.log(2 + E) - 1)) < 1e-6


# --- validation ---

FEATURES = rand(4, 2, 3)
LABELS = longs([0, 1, 0, 1])
NEGATIVES = rand(2, 3, seed=1)
NAN = float("nan")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": np.ones((4, 2, 3))}, TypeError, "features must be a torch.Tensor"),
        ({"features": FEATURES.int()}, TypeError, "features must be a floating"),
        ({"features": torch.ones(4)}, ValueError, r"features must have shape \[N, V, D\] or"),
        ({"features": torch.ones(4, 2, 3, 1)}, ValueError, r"features must have shape \[N, V, D\]"),
        ({"features": torch.ones(4, 0, 3)}, ValueError, "features must have at least one view"),
        ({"features": FEATURES * NAN}, ValueError, "features contains NaN"),
        ({"features": FEATURES / 0}, ValueError, "features contains NaN or infinite"),
        ({"labels": [0, 1, 0, 1]}, TypeError, "labels must be a torch.Tensor"),
        ({"labels": f64([0, 1, 0, 1])}, TypeError, "labels must be an integer tensor"),
        ({"labels": LABELS.bool()}, TypeError, "labels must be an integer tensor"),
        ({"labels": longs([[0, 1], [0, 1]])}, ValueError, r"labels must have shape \[N\]"),
        ({"labels": longs([0, 1])}, ValueError, "labels has size 2 in dimension 0 but must have 4"),
        ({"labels": LABELS.to("meta")}, ValueError, "labels is on meta but features is on cpu"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": -0.1}, ValueError, "temperature must be > 0"),
        ({"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ({"temperature": "0.1"}, TypeError, "temperature must be a real number"),
        ({"base_temperature": 0.0}, ValueError, "base_temperature must be > 0"),
        ({"base_temperature": -1}, ValueError, "base_temperature must be > 0"),
        ({"base_temperature": float("inf")}, ValueError, "base_temperature must be finite"),
        ({"base_temperature": None}, TypeError, "base_temperature must be a real number"),
        ({"contrast_mode": "any"}, ValueError, "contrast_mode must be one of 'all', 'one'"),
        ({"normalize": "yes"}, ValueError, "normalize must be one of True, False"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of 'mean', 'sum', 'none'"),
        ({"negatives": [[1.0, 2.0, 3.0]]}, TypeError, "negatives must be a torch.Tensor"),
        ({"negatives": NEGATIVES.long()}, TypeError, "negatives must be a floating"),
        ({"negatives": NEGATIVES[:, None]}, ValueError, r"negatives must have shape \[M, D\]"),
        ({"negatives": f64([[1.0] * 4])}, ValueError, "negatives has size 4 in dimension 1"),
        ({"negatives": NEGATIVES.float()}, TypeError, "negatives has dtype torch.float32"),
        ({"negatives": NEGATIVES.to("meta")}, ValueError, "negatives is on meta but features"),
        ({"negatives": f64([[0.0, float("nan"), 1.0]])}, ValueError, "negatives contains NaN"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    positional = {"features": FEATURES, "labels": LABELS}
    assert_bad_input_raises("supcon_loss", positional, kwargs, error, match)


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = FEATURES.clone()
    x[0, 0, 0] = float("nan")
    negatives = f64([[float("inf"), 0.0, 0.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    assert supcon(x, LABELS).isnan().item()
    assert not torch.isfinite(supcon(FEATURES, LABELS, negatives=negatives)).item()


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    for labels in (LABELS, None):
        got = unless_cpp_is_refused(
            lambda lab=labels: amc_kernels.supcon_loss(
                FEATURES, lab, negatives=NEGATIVES, backend="cpp"
            )
        )
        if got is not None:
            torch.testing.assert_close(got, supcon(FEATURES, labels, negatives=NEGATIVES))
