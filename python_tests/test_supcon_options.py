"""supcon_loss's options around the op, on every CPU backend: a learnable (tensor) temperature,
no_positive="drop", ignore_index; and the N = 0 gradient of negatives
(docs/design.md#23-supcon_loss)."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import skip_unless_usable

import amc_kernels
from amc_kernels import functional
from amc_kernels.compat import pml

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]
LABELS = torch.tensor([0, 1, 0, 2, 1])  # sample 3 has no other sample of its class


def _features(n: int, views: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, views, d, generator=g, dtype=torch.float64)


# --- learnable temperature ---


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("views", "mode", "normalize", "reduction", "no_positive"),
    [
        (2, "all", True, "mean", "count"),
        (2, "one", False, "sum", "count"),
        (1, "all", True, "none", "count"),
        (1, "all", False, "mean", "drop"),
    ],
)
def test_tensor_temperature_gradcheck(
    backend: str, views: int, mode: str, normalize: bool, reduction: str, no_positive: str
) -> None:
    # ∂L/∂τ (and ∂L/∂features, ∂L/∂negatives) against finite differences in float64.
    skip_unless_usable(backend)
    features = _features(5, views).requires_grad_()
    negatives = _features(2, 1, seed=1)[:, 0].requires_grad_()
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def loss(f: torch.Tensor, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional.supcon_loss(
            f, LABELS, temperature=t, base_temperature=0.2, contrast_mode=mode, negatives=n,
            normalize=normalize, reduction=reduction, no_positive=no_positive, backend=backend,
        )  # fmt: skip

    assert torch.autograd.gradcheck(loss, (features, negatives, tau), fast_mode=True)
    # the value is the number temperature's, to rounding
    number = functional.supcon_loss(
        features, LABELS, temperature=0.3, base_temperature=0.2, contrast_mode=mode,
        negatives=negatives, normalize=normalize, reduction=reduction, no_positive=no_positive,
        backend=backend,
    )  # fmt: skip
    torch.testing.assert_close(loss(features, negatives, tau), number, rtol=1e-13, atol=1e-13)


def test_tensor_temperature_gradient_is_the_closed_form() -> None:
    # ∂L/∂τ = L/τ − (1/τ)·Σ_ac (∂L/∂l_ac)·l_ac, with Σ (∂L/∂l)·l = ½⟨∇_z L, z⟩ for the
    # unnormalised rows z (the logits are quadratic in them): the homogeneity identity.
    features = _features(5, 2).requires_grad_()
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    loss = functional.supcon_loss(features, LABELS, temperature=tau, normalize=False)
    grad_tau, grad_features = torch.autograd.grad(loss, [tau, features])
    expected = loss / tau - 0.5 * (grad_features * features).sum() / tau
    torch.testing.assert_close(grad_tau, expected.detach(), rtol=1e-12, atol=0)


def test_parameter_temperature_trains_in_a_module() -> None:
    # The CLIP-style learnable scale: an nn.Parameter becomes the module's parameter.
    tau = torch.nn.Parameter(torch.tensor(0.2))
    module = amc_kernels.nn.SupConLoss(temperature=tau)
    assert list(module.parameters()) == [tau]
    assert "temperature=tensor(0.2)" in repr(module)
    module(torch.randn(6, 2, 4), torch.tensor([0, 1, 0, 1, 2, 2])).backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


@pytest.mark.parametrize(
    ("temperature", "error", "match"),
    [
        (torch.tensor([0.1]), ValueError, r"temperature must be a number or a 0-d tensor"),
        (torch.tensor(1), TypeError, "temperature must be a floating-point tensor"),
        (torch.tensor(0.0), ValueError, "temperature must be finite and > 0"),
        (torch.tensor(-0.1), ValueError, "temperature must be finite and > 0"),
        (torch.tensor(float("nan")), ValueError, "temperature must be finite and > 0"),
        (torch.tensor(0.1, device="meta"), ValueError, "temperature is on meta but features"),
    ],
)
def test_bad_tensor_temperature_raises(temperature: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        functional.supcon_loss(torch.randn(4, 2, 3), temperature=temperature)


# --- no_positive ---


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_equals_pml_supcon(backend: str) -> None:
    # pytorch-metric-learning drops anchors without positives from the mean (AvgNonZeroReducer)
    # and has no base temperature.
    skip_unless_usable(backend)
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    features = _features(5, 1, d=4)[:, 0].requires_grad_()
    got = functional.supcon_loss(
        features, LABELS, temperature=0.5, base_temperature=0.5, no_positive="drop",
        backend=backend,
    )  # fmt: skip
    expected = losses.SupConLoss(temperature=0.5)(features, LABELS)
    (grad,) = torch.autograd.grad(got, features)
    (expected_grad,) = torch.autograd.grad(expected, features)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_is_sum_over_anchors_with_positives(backend: str) -> None:
    # Every mode and view count: "drop" = "sum" / K; with V ≥ 2 every anchor has a positive (its
    # other views), so "drop" = "count"; with no positive at all it is 0.
    skip_unless_usable(backend)
    for views, mode in itertools.product((1, 2), ("all", "one")):
        features = _features(5, views)
        drop, count, total = (
            functional.supcon_loss(features, LABELS, contrast_mode=mode, backend=backend, **kw)
            for kw in ({"no_positive": "drop"}, {}, {"reduction": "sum"})
        )
        with_positive = 4 * views if mode == "all" else 4
        anchors = 5 * (views if mode == "all" else 1)
        expected = count if views == 2 else total / with_positive
        torch.testing.assert_close(drop, expected, rtol=1e-14, atol=0)
        torch.testing.assert_close(count, total / anchors, rtol=1e-14, atol=0)
    lonely = functional.supcon_loss(_features(3, 1), no_positive="drop", backend=backend)
    assert lonely.item() == 0.0


# --- ignore_index ---


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignored_samples_take_no_part(backend: str, reduction: str) -> None:
    # Samples labelled -1 are neither anchors, positives nor negatives: the loss is that of the
    # batch without them; their gradient is 0; "none" gives 0 at their anchors (rows v·N + n).
    skip_unless_usable(backend)
    labels = torch.tensor([0, -1, 0, 1, -1, 1])
    kept = torch.tensor([0, 2, 3, 5])
    features = _features(6, 2).requires_grad_()
    negatives = _features(2, 1, seed=3)[:, 0]
    got = functional.supcon_loss(
        features, labels, negatives=negatives, reduction=reduction, ignore_index=-1,
        backend=backend,
    )  # fmt: skip
    expected = functional.supcon_loss(
        features[kept], labels[kept], negatives=negatives, reduction=reduction, backend=backend
    )
    if reduction == "none":
        assert got.shape == (12,)
        rows = torch.cat([kept, kept + 6])
        assert (got[[1, 4, 7, 10]] == 0).all()
        got = got[rows]
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(got.sum(), features)
    assert (grad[[1, 4]] == 0).all() and (grad[kept] != 0).any()


def test_ignore_index_errors() -> None:
    with pytest.raises(ValueError, match="supcon_loss: ignore_index needs labels"):
        functional.supcon_loss(torch.randn(4, 2, 3), ignore_index=-1)
    with pytest.raises(TypeError, match="ignore_index must be an int or None, got float"):
        functional.supcon_loss(torch.randn(4, 2, 3), LABELS[:4], ignore_index=-1.0)
    with pytest.raises(ValueError, match="no_positive must be one of 'count', 'drop'"):
        functional.supcon_loss(torch.randn(4, 2, 3), LABELS[:4], no_positive="skip")
    everything = functional.supcon_loss(
        torch.randn(2, 2, 3), torch.tensor([-1, -1]), ignore_index=-1
    )
    assert everything.item() == 0.0


# --- bad input that used to get through ---


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["all", "one"])
def test_empty_batch_gives_zero_gradient_for_negatives(backend: str, mode: str) -> None:
    # N = 0 with negatives: a zero loss and zero gradients of the inputs' shapes, [M, D] for the
    # negatives (the reference's graph used to leave them out).
    skip_unless_usable(backend)
    features = torch.zeros(0, 2, 4, dtype=torch.float64, requires_grad=True)
    negatives = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = functional.supcon_loss(
        features, torch.zeros(0, dtype=torch.long), negatives=negatives, contrast_mode=mode,
        backend=backend,
    )  # fmt: skip
    grads = torch.autograd.grad(loss, [features, negatives])
    assert loss.item() == 0.0
    assert grads[0].shape == (0, 2, 4) and grads[1].shape == (3, 4)
    assert (grads[1] == 0).all()


def test_pml_module_is_importable_without_pml() -> None:
    assert pml.SupConLoss().temperature == 0.1 and pml.NTXentLoss().temperature == 0.07
