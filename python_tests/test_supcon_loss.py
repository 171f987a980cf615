"""supcon_loss (docs/design.md#23-supcon_loss): closed forms, a numpy oracle, gradients, dtypes,
validation."""

from __future__ import annotations

import itertools
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
@given(
    n=st.integers(1, 6),
    views=st.integers(1, 3),
    d=st.integers(1, 5),
    classes=st.one_of(st.none(), st.integers(1, 4)),
    m=st.one_of(st.none(), st.integers(0, 3)),
    mode=st.sampled_from(["all", "one"]),
    normalize=st.booleans(),
    temperature=st.floats(0.05, 2.0),
    base_temperature=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_numpy_oracle(
    n, views, d, classes, m, mode, normalize, temperature, base_temperature, seed
) -> None:
    check_oracle(
        rand(n, views, d, seed=seed),
        None if classes is None else rand_labels(n, classes, seed=seed),
        None if m is None else rand(m, d, seed=seed + 1),
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


@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_gradients_are_finite_at_special_vectors(
    kind: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    if kind == "zero" and dtype == torch.float16:
        request.applymarker(ZERO_FP16)
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
    error = (low.double() - exact).abs().max().item()
    assert error < 1e-4  # fp32 compute on the same rounded inputs
    ok, err, bound = within_reference_error(low, low, exact, FLOOR[dtype])
    assert ok and err == pytest.approx(error)
    ok, _, _ = within_reference_error(exact + 1.01 * bound + error, low, exact, FLOOR[dtype])
    assert not ok


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
    args = {"features": FEATURES, "labels": LABELS, "backend": "reference", **kwargs}
    with pytest.raises(error, match=match) as info:
        functional.supcon_loss(args.pop("features"), args.pop("labels"), **args)
    assert "backend" in kwargs or str(info.value).startswith("supcon_loss: ")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = FEATURES.clone()
    x[0, 0, 0] = float("nan")
    negatives = f64([[float("inf"), 0.0, 0.0]])
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    assert supcon(x, LABELS).isnan().item()
    assert not torch.isfinite(supcon(FEATURES, LABELS, negatives=negatives)).item()


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    for labels in (LABELS, None):
        try:
            got = amc_kernels.supcon_loss(FEATURES, labels, negatives=NEGATIVES, backend="cpp")
        except BackendUnavailableError as error:
            assert "'cpp'" in str(error) and "reference: usable" in str(error)
        else:
            torch.testing.assert_close(got, supcon(FEATURES, labels, negatives=NEGATIVES))


# --- cpp backend ---


def supcon_cpp(features: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
    return functional.supcon_loss(features, labels, backend="cpp", **kwargs)


def run_with_grads(backend: str, features, labels, negatives, **kwargs) -> list[torch.Tensor]:
    """[loss, dL/dfeatures, dL/dnegatives?] of a fixed projection of the loss."""
    x = features.detach().clone().requires_grad_()
    leaves = [x]
    neg = None
    if negatives is not None:
        neg = negatives.detach().clone().requires_grad_()
        leaves.append(neg)
    out = functional.supcon_loss(x, labels, negatives=neg, backend=backend, **kwargs)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(
        (out * weights).sum(), leaves, allow_unused=True, materialize_grads=True
    )
    assert all(g.dtype == features.dtype for g in grads)
    return [out.detach(), *grads]


def assert_cpp_matches_reference(features, labels=None, negatives=None, **kwargs) -> None:
    """Value and gradients under the low-precision rule of docs/design.md#7-tests."""
    got = run_with_grads("cpp", features, labels, negatives, **kwargs)
    same = run_with_grads("reference", features, labels, negatives, **kwargs)
    exact = run_with_grads(
        "reference",
        features.double(),
        labels,
        None if negatives is None else negatives.double(),
        **kwargs,
    )
    names = ("loss", "grad features", "grad negatives")[: len(got)]
    for name, g, s, e in zip(names, got, same, exact, strict=True):
        assert g.shape == e.shape and g.dtype == s.dtype, (name, g.shape, e.shape)
        ok, error, bound = within_reference_error(g, s, e, FLOOR[features.dtype])
        assert ok, f"{name}: cpp error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize(
    ("mode", "normalize", "shape"),
    [
        # 1400 anchors: task tiles of 350 rows (on two threads) walk several 256-row GEMM tiles
        ("all", True, (700, 2, 8)),
        ("one", False, (150, 3, 16)),
    ],
)
def test_cpp_fp64_is_exact_to_rounding(mode: str, normalize: bool, shape: tuple) -> None:
    # Unnormalised rows of norm ~1 keep the logits in a sane range.
    scale = 1.0 if normalize else 0.25
    n, views, d = shape
    x, labels = rand(n, views, d, seed=3) * scale, rand_labels(n, 5, seed=3)
    negatives = rand(37, d) * scale
    kwargs = {"contrast_mode": mode, "normalize": normalize, "reduction": "none"}
    got = run_with_grads("cpp", x, labels, negatives, **kwargs)
    expected = run_with_grads("reference", x, labels, negatives, **kwargs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12 * e.abs().max().item())


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("n", [60, 150], ids=["one tile", "multi-tile"])
def test_cpp_float32_large_logits_are_consistent(n: int) -> None:
    # Unnormalised rows of norm ~120 at T = 0.1: logits ~1e5, where one fp32 ulp of a logit moves
    # its softmax by ~1%. Each pair's logit must be one value in the forward and the backward,
    # also inside diagonal tiles, for the gradient to stay within the reference's error.
    x, labels = rand(n, 2, 16, seed=n) * 30, rand_labels(n, 5, seed=n)
    assert_cpp_matches_reference(
        x.float(), labels, normalize=False, temperature=0.1, reduction="none"
    )


@pytest.mark.cpp
@needs_cpp
def test_cpp_labels_are_any_integers() -> None:
    x = rand(8, 2, 4, seed=5)
    raw = longs([10**12, -3, 7, -3, 10**12, 7, 7, 0])
    dense = longs([3, 0, 2, 0, 3, 2, 2, 1])
    expected = supcon(x, dense, reduction="none")
    for labels in (raw, raw.int() % 1000, (dense * 60).to(torch.uint8), dense.to(torch.int16)):
        got = functional.supcon_loss(x, labels, reduction="none", backend="cpp")
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_cpp_special_vectors(kind: str, dtype: torch.dtype) -> None:
    x = torch.tensor(SPECIAL[kind], dtype=dtype)
    negatives = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], dtype=dtype)
    for labels in (None, longs([0, 0])):
        if kind == "zero" and dtype == torch.float16:
            # d(x / max(‖x‖, 1e-12))/dx = 1e12 at x = 0, above the fp16 maximum: inf in both.
            (grad,) = run_with_grads("cpp", x, labels, None)[1:]
            assert bool(torch.isinf(grad[0, 0]).any()) and bool(torch.isfinite(grad[0, 1]).all())
            continue
        for neg in (None, negatives):
            assert_cpp_matches_reference(x, labels, neg)


@pytest.mark.cpp
@needs_cpp
def test_cpp_anchors_without_positives() -> None:
    # V = 1 and singleton labels: every loss and gradient is exactly 0.
    x = rand(5, 3, seed=1).requires_grad_()
    out = functional.supcon_loss(x, longs([4, 1, 2, 0, 3]), reduction="none", backend="cpp")
    assert torch.equal(out, torch.zeros(5, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))
    # Mixed: one pair among five; the others count in the mean with a zero loss.
    labels = longs([0, 1, 0, 2, 3])
    for negatives in (None, rand(2, 3, seed=2)):
        for reduction in REDUCTIONS:
            assert_cpp_matches_reference(x.detach(), labels, negatives, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 7),
    views=st.integers(1, 3),
    d=st.integers(1, 5),
    classes=st.one_of(st.none(), st.integers(1, 4)),
    m=st.one_of(st.none(), st.integers(0, 3)),
    mode=st.sampled_from(["all", "one"]),
    normalize=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    temperature=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_cpp_property_matches_reference(
    n, views, d, classes, m, mode, normalize, reduction, temperature, seed
) -> None:
    x = rand(n, views, d, seed=seed)
    labels = None if classes is None else rand_labels(n, classes, seed=seed)
    negatives = None if m is None else rand(m, d, seed=seed + 1)
    kwargs = {
        "temperature": temperature,
        "contrast_mode": mode,
        "normalize": normalize,
        "reduction": reduction,
    }
    got = run_with_grads("cpp", x, labels, negatives, **kwargs)
    expected = run_with_grads("reference", x, labels, negatives, **kwargs)
    for g, e in zip(got, expected, strict=True):
        scale = 1.0 + (e.abs().max().item() if e.numel() else 0.0)
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-11 * scale)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    from amc_kernels import _dispatch

    for dtype in ALL_DTYPES:
        call = _dispatch.Call("supcon_loss", torch.device("cpu"), dtype, ((4, 2, 3), (4,)))
        assert _dispatch.select(call).backend == "cpp"
    x, labels = rand(4, 2, 3, seed=6), longs([0, 1, 0, 1])
    assert torch.equal(amc_kernels.supcon_loss(x, labels), supcon_cpp(x, labels))


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
# (views, contrast_mode, labels, negatives, normalize, reduction): every option in both states,
# with views 1 ([N, D] features), 2 and 3.
TRITON_GRID = [
    (2, "all", True, True, True, "mean"),
    (2, "one", False, True, False, "none"),
    (1, "all", True, False, True, "sum"),
    (3, "one", True, False, False, "mean"),
    (2, "all", False, False, True, "none"),
    (3, "all", False, True, False, "sum"),
    (1, "one", True, True, True, "none"),
]


def assert_triton_matches(features, labels=None, **kwargs) -> None:
    """Value and gradients (features and negatives) against the reference."""
    ok, error, bound = compare_backend("supcon_loss", "triton", (features, labels), kwargs)
    assert ok, f"{kwargs}: error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize(
    ("views", "mode", "with_labels", "with_negatives", "normalize", "reduction"),
    TRITON_GRID,
    ids=[
        f"V{v}-{m}-{'lab' if b else 'nolab'}-{'neg' if n else 'noneg'}-{'norm' if z else 'raw'}-{r}"
        for v, m, b, n, z, r in TRITON_GRID
    ],
)
def test_triton_matches_reference(
    triton_device: torch.device,
    dtype: torch.dtype,
    views: int,
    mode: str,
    with_labels: bool,
    with_negatives: bool,
    normalize: bool,
    reduction: str,
) -> None:
    # Beyond one tile of rows: 16 under the interpreter, 128 on GPUs.
    n = 9 if triton_device.type == "cpu" else 150
    shape = (n, 16) if views == 1 else (n, views, 16)
    x = (rand(*shape, seed=views, dtype=torch.float64) * (1.0 if normalize else 0.3)).to(dtype)
    labels = rand_labels(n, 3, seed=views).to(triton_device) if with_labels else None
    negatives = rand(5, 16, seed=7, dtype=dtype).to(triton_device) if with_negatives else None
    assert_triton_matches(
        x.to(triton_device),
        labels,
        negatives=negatives,
        temperature=0.2,
        contrast_mode=mode,
        normalize=normalize,
        reduction=reduction,
    )


@pytest.mark.triton
def test_triton_streams_the_feature_axis_in_chunks(triton_device: torch.device) -> None:
    d = 40 if triton_device.type == "cpu" else 300  # three chunks / chunked on GPUs
    x = rand(7, 2, d, seed=51).to(triton_device)
    labels = rand_labels(7, 3, seed=51).to(triton_device)
    assert_triton_matches(x, labels, negatives=rand(4, d, seed=52).to(triton_device))
    assert_triton_matches(x, None, contrast_mode="one", reduction="none")


@pytest.mark.triton
def test_triton_anchors_without_positives_and_degenerate_batches(
    triton_device: torch.device,
) -> None:
    def run(x, labels=None, **kwargs):
        return functional.supcon_loss(x, labels, backend="triton", **kwargs)

    dev = triton_device
    # V = 1 and singleton labels: every anchor has no positive and contributes exactly 0.
    x = f64([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dev)
    assert torch.equal(
        run(x, longs([0, 1, 2]).to(dev), reduction="none").cpu(), torch.zeros(3).double()
    )
    # One positive pair among four anchors (the closed form of the reference tests).
    x = f64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dev)
    got = run(
        x, longs([0, 0, 1, 2]).to(dev), temperature=1.0, base_temperature=1.0, reduction="none"
    )
    pair = math.log(E + 1 + 1 / E) - 1
    torch.testing.assert_close(got.cpu(), f64([pair, pair, 0.0, 0.0]), rtol=0, atol=1e-12)
    # A single sample: no denominator (0), or a negative but still no positive (0).
    one = f64([[0.3, -1.0, 2.0]], dev).requires_grad_()
    for negatives in (None, f64([[0.0, 1.0, 0.0]], dev)):
        out = run(one, negatives=negatives)
        (grad,) = torch.autograd.grad(out, one)
        assert out.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    # An empty batch, with and without negatives.
    empty = torch.zeros(0, 2, 4, device=dev, requires_grad=True)
    for negatives in (None, torch.randn(3, 4, device=dev)):
        out = run(empty, negatives=negatives)
        (grad,) = torch.autograd.grad(out, empty)
        assert out.item() == 0.0 and grad.shape == empty.shape
        assert run(empty, negatives=negatives, reduction="none").shape == (0,)
    # Everything one class: every other row is a positive.
    x = rand(6, 2, 5, seed=53).to(dev)
    assert_triton_matches(x, torch.zeros(6, dtype=torch.long, device=dev))


@pytest.mark.triton
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_triton_special_vectors(triton_device: torch.device, kind: str) -> None:
    x = torch.tensor(SPECIAL[kind], dtype=torch.float64, device=triton_device)
    negatives = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64, device=triton_device)
    for labels in (None, longs([0, 0]).to(triton_device)):
        assert_triton_matches(x, labels, negatives=negatives)
        leaf = x.float().requires_grad_()
        out = functional.supcon_loss(leaf, labels, backend="triton")
        (grad,) = torch.autograd.grad(out, leaf)
        assert bool(torch.isfinite(out)) and bool(torch.isfinite(grad).all())


@pytest.mark.triton
def test_triton_non_contiguous_inputs_and_label_dtypes(triton_device: torch.device) -> None:
    x = rand(2, 6, 5, seed=41).to(triton_device).transpose(0, 1)  # [6, 2, 5], view-major memory
    negatives = rand(5, 6, seed=42).to(triton_device).T[::2]  # [3, 5]
    labels = rand_labels(12, 3, seed=41).to(triton_device)[::2]
    assert not (x.is_contiguous() or negatives.is_contiguous() or labels.is_contiguous())
    for label_dtype in (torch.int64, torch.int32, torch.uint8):
        assert_triton_matches(x, labels.to(label_dtype), negatives=negatives, reduction="none")


@pytest.mark.triton
@pytest.mark.parametrize(
    ("with_labels", "mode", "normalize"), [(True, "all", True), (False, "one", False)]
)
def test_triton_gradcheck(
    triton_device: torch.device, with_labels: bool, mode: str, normalize: bool
) -> None:
    x = rand(4, 2, 3, seed=21).to(triton_device).requires_grad_()
    negatives = rand(2, 3, seed=22).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 0]).to(triton_device) if with_labels else None
    assert torch.autograd.gradcheck(
        lambda f, g: functional.supcon_loss(
            f,
            labels,
            negatives=g,
            temperature=0.5,
            contrast_mode=mode,
            normalize=normalize,
            reduction="none",
            backend="triton",
        ),
        (x, negatives),
        fast_mode=True,
    )


@pytest.mark.triton
def test_triton_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    # Under the interpreter the fake-tensor checks would launch the interpreted kernel on fake
    # tensors (it copies arguments to host memory), so CPU runs the schema and autograd checks.
    utils = ("test_schema", "test_autograd_registration")
    if triton_device.type == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    x = rand(5, 2, 4, seed=1).to(triton_device).requires_grad_()
    negatives = rand(3, 4, seed=2).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 1, 1]).to(triton_device)
    for lab, neg in ((labels, negatives), (None, None)):
        args = (x, lab, neg, 0.1, 0.07, "all", True, "mean")
        torch.library.opcheck(ops.supcon_loss_fwd, args, test_utils=utils)
        loss, lse = ops.supcon_loss_fwd(*args)
        assert lse.shape == (10,) and lse.dtype == loss.dtype
        detached = None if neg is None else neg.detach()
        bwd_args = (torch.ones_like(loss), x.detach(), lab, detached, lse, *args[3:])
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(ops.supcon_loss_bwd, (*bwd_args, mask), test_utils=utils)


@pytest.mark.triton
def test_triton_saves_the_natural_log_sum_exp(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    x = rand(5, 2, 4, seed=3, dtype=torch.float64).to(triton_device)
    negatives = rand(3, 4, seed=4, dtype=torch.float64).to(triton_device)
    _, lse = ops.supcon_loss_fwd(x, None, negatives, 0.5, 0.07, "all", True, "none")
    z = torch.nn.functional.normalize(torch.cat([x.transpose(0, 1).reshape(10, 4), negatives]))
    logits = (z[:10] @ z.T / 0.5).fill_diagonal_(float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=1), rtol=1e-13, atol=0)
    _, alone = ops.supcon_loss_fwd(x[:1, :1], None, None, 0.5, 0.07, "all", True, "none")
    assert alone.tolist() == [float("-inf")]  # an anchor that is the only row


@pytest.mark.triton
def test_triton_backward_honours_output_mask(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    x = rand(6, 2, 4, seed=5, dtype=torch.float64).to(triton_device)
    negatives = rand(3, 4, seed=6, dtype=torch.float64).to(triton_device)
    labels = longs([0, 1, 0, 2, 1, 1]).to(triton_device)
    cases = ((labels, negatives, "all"), (None, negatives, "one"), (labels, None, "all"))
    for lab, neg, mode in cases:
        args = (0.1, 0.07, mode, True, "none")
        loss, lse = ops.supcon_loss_fwd(x, lab, neg, *args)
        grad = rand(loss.shape[0], seed=7, dtype=torch.float64).to(triton_device)
        full = ops.supcon_loss_bwd(grad, x, lab, neg, lse, *args, [True, True])
        for mask in ([True, False], [False, True]):
            got = ops.supcon_loss_bwd(grad, x, lab, neg, lse, *args, mask)
            for wanted, g, f in zip(mask, got, full, strict=True):
                if wanted and f.numel():
                    assert torch.equal(g, f)
                else:
                    assert g.shape == (0,)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("with_labels", [True, False])
def test_triton_torch_compile_fullgraph(with_labels: bool) -> None:
    x = rand(64, 2, 32, seed=1).float().cuda().requires_grad_()
    labels = rand_labels(64, 5, seed=1).cuda() if with_labels else None

    @torch.compile(fullgraph=True)
    def loss(f: torch.Tensor) -> torch.Tensor:
        return amc_kernels.supcon_loss(f, labels, backend="triton")

    got = loss(x)
    (grad,) = torch.autograd.grad(got, x)
    expected = supcon(x.double(), labels)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.slow
def test_triton_memory_is_linear_in_the_batch() -> None:
    # 65536 view rows of D = 128 in bf16 (16 MB): the A × C logits alone would take 16 GB in
    # fp32; the kernels need O(C·D) working memory (a few fp32 copies of Z).
    x = torch.randn(32768, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(100, (32768,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    functional.supcon_loss(x, labels, backend="triton").backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 512 * 2**20


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 2, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.supcon_loss(x, backend="triton")
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward.*supcon_loss_triton_bwd"):
        grad.sum().backward()
