"""class_activation_map (docs/design.md#25-class_activation_map): closed forms, a numpy oracle, the
Grad-CAM equivalence, gradients, dtypes, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import SEEDS, assert_bad_input_raises, sizes, unless_cpp_is_refused
from conftest import DTYPE_IDS, f64, intercept_dispatch, longs, rand
from conftest import rand_labels as rand_targets
from hypothesis import given, settings

import amc_kernels
from amc_kernels import functional


def cam(activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.class_activation_map(activations, fc_weight, targets, backend="reference")


def np_cam(activations: torch.Tensor, fc_weight: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """The numpy oracle: CAM_b = Σ_k W[t_b, k]·A_bk / (H·W), with plain loops in float64."""
    a = activations.double().numpy()
    w = fc_weight.double().numpy()
    batch, channels, height, width = a.shape
    out = np.zeros((batch, height, width))
    for b in range(batch):
        for k in range(channels):
            out[b] += w[int(targets[b]), k] * a[b, k]
    return out / (height * width)


def assert_matches(got: torch.Tensor, expected: np.ndarray, tol: float = 1e-12) -> None:
    assert got.dtype == torch.float64
    assert tuple(got.shape) == expected.shape, (tuple(got.shape), expected.shape)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=tol, atol=tol)


# --- closed form ---


def test_two_classes_two_maps_by_hand() -> None:
    # A₀ = [[1, 2], [3, 4]], A₁ = [[1, 1], [1, 1]] for both maps; W = [[0.5, −1], [2, 3]].
    # Target 1: (2·A₀ + 3·A₁) / 4 = [[5, 7], [9, 11]] / 4.
    # Target 0: (0.5·A₀ − A₁) / 4 = [[−0.5, 0], [0.5, 1]] / 4.
    a0 = [[1.0, 2.0], [3.0, 4.0]]
    a = f64([[a0, [[1.0, 1.0], [1.0, 1.0]]]] * 2)
    weight = f64([[0.5, -1.0], [2.0, 3.0]])
    got = cam(a, weight, longs([1, 0]))
    expected = f64([[[5.0, 7.0], [9.0, 11.0]], [[-0.5, 0.0], [0.5, 1.0]]]) / 4
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_divides_by_the_pixel_count_not_the_channels_by_hand() -> None:
    # One pixel, three channels (1, 2, 3), W[0] = (1, 1, 1): CAM = 6 / (1·1) = 6.
    # A 1×3 map with one channel [3, 6, 9] and W = 2: CAM = 2·[3, 6, 9] / 3 = [2, 4, 6].
    got = cam(f64([[[[1.0]], [[2.0]], [[3.0]]]]), f64([[1.0, 1.0, 1.0]]), longs([0]))
    assert got.shape == (1, 1, 1) and got.item() == 6.0
    got = cam(f64([[[[3.0, 6.0, 9.0]]]]), f64([[2.0]]), longs([0]))
    torch.testing.assert_close(got, f64([[[2.0, 4.0, 6.0]]]), rtol=0, atol=1e-12)


def test_no_relu_negative_values_stay() -> None:
    # W = −1 on a positive map: the CAM is the negated mean-scaled map, no ReLU.
    got = cam(f64([[[[4.0, 8.0]]]]), f64([[-1.0]]), longs([0]))
    torch.testing.assert_close(got, f64([[[-2.0, -4.0]]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (1, 1, 1, 1), (2, 7, 3, 1), (5, 2, 4, 4)])
def test_numpy_oracle(shape: tuple[int, int, int, int]) -> None:
    a, weight = rand(*shape, seed=1), rand(6, shape[1], seed=2)
    targets = rand_targets(shape[0], 6)
    assert_matches(cam(a, weight, targets), np_cam(a, weight, targets))


# --- equivalences and properties ---


class GapLinear(torch.nn.Module):
    """conv → AdaptiveAvgPool2d(1) → flatten → Linear: the head CAM is defined for."""

    def __init__(self, channels: int = 5, classes: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv(x)
        return self.fc(self.pool(a).flatten(1)), a


@pytest.mark.parametrize(("height", "width"), [(5, 6), (4, 4), (1, 3)])
def test_equals_gradcam_at_a_gap_linear_head(height: int, width: int) -> None:
    # G = ∂(Σ_b logits[b, t_b])/∂A = W[t_b] / (H·W), spatially constant, so
    # Σ_k mean(G_k)·A_k = Σ_k G_k ⊙ A_k = Σ_k W[t_b, k]·A_k / (H·W) = CAM.
    torch.manual_seed(0)
    model = GapLinear().double()
    x = torch.randn(3, 3, height, width, dtype=torch.float64)
    logits, a = model(x)
    targets = longs([2, 0, 2])
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a)
    a = a.detach()
    expected = cam(a, model.fc.weight.detach(), targets)
    for weighting in ("mean", "elementwise"):
        got = functional.gradcam(a, g, weighting=weighting, relu=False, backend="reference")
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    # And the numpy oracle agrees, so the three are not merely equal to each other.
    assert_matches(expected, np_cam(a, model.fc.weight.detach(), targets))
    # Σ_hw CAM_b = the logit minus the bias (the GAP → Linear identity).
    torch.testing.assert_close(
        expected.sum(dim=(1, 2)),
        (logits.gather(1, targets[:, None])[:, 0] - model.fc.bias[targets]).detach(),
        rtol=1e-12,
        atol=1e-12,
    )


def test_linear_in_the_weight_and_ignores_other_classes() -> None:
    a = rand(3, 4, 3, 5, seed=3)
    w1, w2 = rand(5, 4, seed=4), rand(5, 4, seed=5)
    targets = longs([4, 1, 1])
    lhs = cam(a, 2.0 * w1 - w2, targets)
    torch.testing.assert_close(lhs, 2.0 * cam(a, w1, targets) - cam(a, w2, targets))
    # Rows of W that no target selects have no effect.
    w3 = w1.clone()
    w3[[0, 2, 3]] = 1e3
    torch.testing.assert_close(cam(a, w3, targets), cam(a, w1, targets), rtol=0, atol=0)


def test_each_map_depends_only_on_its_own_sample() -> None:
    a, weight = rand(4, 3, 2, 3, seed=6), rand(5, 3, seed=7)
    targets = longs([0, 4, 2, 2])
    full = cam(a, weight, targets)
    for b in range(4):
        torch.testing.assert_close(full[b : b + 1], cam(a[b : b + 1], weight, targets[b : b + 1]))
    perm = longs([2, 0, 3, 1])
    torch.testing.assert_close(cam(a[perm], weight, targets[perm]), full[perm])


@settings(max_examples=15, deadline=None)
@given(
    **sizes(batch=(1, 4), channels=(1, 6), height=(1, 6), width=(1, 6), classes=(1, 5)),
    seed=SEEDS,
)
def test_property_matches_numpy_oracle(batch, channels, height, width, classes, seed) -> None:
    a, weight = (
        rand(batch, channels, height, width, seed=seed),
        rand(classes, channels, seed=seed + 1),
    )
    targets = rand_targets(batch, classes, seed=seed)
    got = functional.class_activation_map(a, weight, targets, backend="reference")
    assert_matches(got, np_cam(a, weight, targets))


# --- gradients ---


def test_gradcheck_activations_and_fc_weight() -> None:
    a = rand(3, 4, 3, 2, seed=10).requires_grad_()
    weight = rand(5, 4, seed=11).requires_grad_()
    targets = longs([1, 4, 1])  # a repeated target: its W row gets two contributions
    assert torch.autograd.gradcheck(lambda a, w: cam(a, w, targets), (a, weight))
    assert torch.autograd.gradgradcheck(lambda a, w: cam(a, w, targets), (a, weight))


def test_gradients_by_hand() -> None:
    # Σ CAM = Σ_b Σ_k W[t_b, k]·mean_hw(A_bk): dA_bk = W[t_b, k] / (H·W) and
    # dW[c, k] = Σ_{b: t_b = c} mean_hw(A_bk).
    a = rand(2, 3, 2, 2, seed=12).requires_grad_()
    weight = rand(4, 3, seed=13).requires_grad_()
    targets = longs([3, 3])
    cam(a, weight, targets).sum().backward()
    torch.testing.assert_close(
        a.grad, (weight[targets] / 4).detach()[:, :, None, None].expand_as(a)
    )
    expected = torch.zeros(4, 3, dtype=torch.float64)
    expected[3] = a.detach().mean(dim=(2, 3)).sum(dim=0)
    torch.testing.assert_close(weight.grad, expected, rtol=1e-12, atol=1e-14)


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
def test_dtype_is_kept_and_values_match_fp64(dtype: torch.dtype) -> None:
    a, weight = rand(3, 16, 4, 5, seed=20, dtype=dtype), rand(6, 16, seed=21, dtype=dtype)
    targets = longs([5, 0, 3])
    got = cam(a, weight, targets)
    assert got.dtype == dtype and got.shape == (3, 4, 5)
    # Same rounded inputs in fp64: only fp32 round-off and the final rounding to `dtype`.
    expected = torch.from_numpy(np_cam(a, weight, targets))
    scale = np.abs(a.double().numpy()).max() * np.abs(weight.double().numpy()).max() * 16 / 20
    compute_eps = 1e-15 if dtype == torch.float64 else 1e-6
    tol = torch.finfo(dtype).eps + compute_eps
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * scale)


def test_targets_can_be_any_integer_dtype() -> None:
    a, weight = rand(4, 3, 2, 2, seed=14), rand(4, 3, seed=15)
    for values in ([3, 1, 0, 3], [1, 1, 1, 1]):
        expected = np_cam(a, weight, longs(values))
        for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            # uint8 must not be read as a boolean mask: with B = C and all targets 1, a mask
            # would pick rows 0..3 of W instead of row 1 four times.
            assert_matches(cam(a, weight, torch.tensor(values, dtype=dtype)), expected)


def test_empty_batch(device: torch.device) -> None:
    a = torch.zeros(0, 3, 4, 5, device=device, requires_grad=True)
    weight = torch.ones(2, 3, device=device, requires_grad=True)
    out = functional.class_activation_map(
        a, weight, torch.zeros(0, dtype=torch.long, device=device)
    )
    assert out.shape == (0, 4, 5) and out.dtype == torch.float32
    assert out.device.type == device.type
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().max().item() == 0.0


def test_zero_channels_give_zero_maps() -> None:
    out = cam(
        torch.zeros(2, 0, 3, 3, dtype=torch.float64),
        torch.zeros(4, 0, dtype=torch.float64),
        longs([1, 3]),
    )
    assert out.shape == (2, 3, 3) and out.abs().max().item() == 0.0


def test_output_is_on_the_input_device(device: torch.device) -> None:
    a, weight = rand(2, 3, 4, 4, seed=25).to(device), rand(4, 3, seed=26).to(device)
    targets = longs([3, 0]).to(device)
    out = functional.class_activation_map(a, weight, targets)
    assert out.device.type == device.type
    assert_matches(out.cpu(), np_cam(a.cpu(), weight.cpu(), targets.cpu()))


# --- validation ---

A = rand(2, 3, 4, 5, seed=40)
W = rand(4, 3, seed=41)
T = longs([3, 0])
NAN = float("nan")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"activations": A.tolist()}, TypeError, "activations must be a torch.Tensor"),
        ({"activations": A.int()}, TypeError, "activations must be a floating-point tensor"),
        ({"activations": A[0]}, ValueError, r"activations must have shape \[B, K, H, W\]"),
        ({"activations": A * NAN}, ValueError, "activations contains NaN"),
        ({"activations": A / 0}, ValueError, "activations contains NaN or infinite"),
        ({"fc_weight": W.numpy()}, TypeError, "fc_weight must be a torch.Tensor"),
        ({"fc_weight": W.long()}, TypeError, "fc_weight must be a floating-point tensor"),
        ({"fc_weight": W[0]}, ValueError, r"fc_weight must have shape \[C, K\]"),
        ({"fc_weight": W[None]}, ValueError, r"fc_weight must have shape \[C, K\]"),
        (
            {"fc_weight": W[:, :2]},
            ValueError,
            "fc_weight has size 2 in dimension 1 but must have 3",
        ),
        ({"fc_weight": W.T}, ValueError, r"fc_weight has size 4 in dimension 1 .*channels K"),
        ({"fc_weight": W.float()}, TypeError, "fc_weight has dtype torch.float32 but activations"),
        ({"fc_weight": W.to("meta")}, ValueError, "fc_weight is on meta but activations is on cpu"),
        ({"fc_weight": W * NAN}, ValueError, "fc_weight contains NaN"),
        ({"targets": [3, 0]}, TypeError, "targets must be a torch.Tensor"),
        ({"targets": T.double()}, TypeError, "targets must be an integer tensor"),
        ({"targets": T.bool()}, TypeError, "targets must be an integer tensor"),
        ({"targets": T[:, None]}, ValueError, r"targets must have shape \[B\]"),
        ({"targets": T[:1]}, ValueError, "targets has size 1 in dimension 0 but must have 2"),
        ({"targets": T.to("meta")}, ValueError, "targets is on meta but activations is on cpu"),
        (
            {"targets": longs([4, 0])},
            ValueError,
            r"targets must lie in \[0, 4\) .*got values in \[0, 4\]",
        ),
        ({"targets": longs([0, -1])}, ValueError, r"targets must lie in \[0, 4\)"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    positional = {"activations": A, "fc_weight": W, "targets": T}
    assert_bad_input_raises("class_activation_map", positional, kwargs, error, match)


def test_activations_on_another_device() -> None:
    with pytest.raises(ValueError, match="fc_weight is on cpu but activations is on meta"):
        functional.class_activation_map(A.to("meta"), W, T, backend="reference")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    # With AMC_KERNELS_CHECK_VALUES=0 the NaN and index-range checks are skipped: a NaN
    # reaches the result, and out-of-range targets reach the backend (intercepted here, so
    # that no kernel indexes out of bounds).
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    a = A.clone()
    a[1, 0, 0, 0] = NAN
    out = cam(a, W, T)
    assert out[1, 0, 0].isnan().item() and not out[0].isnan().any()
    calls = intercept_dispatch(monkeypatch)
    assert functional.class_activation_map(A, W, longs([7, -2])) == "passed"
    assert calls == [("class_activation_map", {})]
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match="targets must lie in"):
        functional.class_activation_map(A, W, longs([7, -2]))


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    got = unless_cpp_is_refused(lambda: amc_kernels.class_activation_map(A, W, T, backend="cpp"))
    if got is not None:
        assert_matches(got, np_cam(A, W, T))
