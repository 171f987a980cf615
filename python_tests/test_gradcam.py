"""gradcam (docs/design.md#24-gradcam): closed forms, a numpy oracle, gradients, dtypes,
validation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import SEEDS, assert_bad_input_raises, shapes, sizes, unless_cpp_is_refused
from conftest import DTYPE_IDS, f64, rand
from hypothesis import given, settings
from hypothesis import strategies as st
from resize_oracle import assert_np_resize_matches_interpolate, np_resize

import amc_kernels
from amc_kernels import functional

WEIGHTINGS = ("mean", "elementwise")
NORMALIZATIONS = (None, "max", "minmax", "sum")
EPS = 1e-8  # the constant of every map normalisation (docs/design.md#24-gradcam)


def gradcam(activations: torch.Tensor, gradients: torch.Tensor, **kwargs) -> torch.Tensor:
    return functional.gradcam(activations, gradients, backend="reference", **kwargs)


def positive(*shape: int, seed: int = 0) -> torch.Tensor:
    """Values in [0.1, 1.1): every product and every map is strictly positive (no ReLU kink)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1


# The numpy oracle: bilinear resampling (align_corners=False) as per-axis matrices, then
# docs/design.md#24-gradcam step by step in float64. It never calls amc_kernels.reference or
# F.interpolate.


def np_normalize(m: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:
        return m
    if mode == "max":
        return m / (m.max() + EPS)
    if mode == "minmax":
        shifted = m - m.min()
        return shifted / (shifted.max() + EPS)
    return m / (m.sum() + EPS) + EPS


def np_gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    weighting: str = "mean",
    relu: bool = True,
    normalize: str | None = None,
    output_size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    a = activations.double().numpy()
    g = gradients.double().numpy()
    batch, channels, height, width = a.shape
    maps = []
    for b in range(batch):
        raw = np.zeros((height, width))
        for k in range(channels):
            weight = g[b, k].mean() if weighting == "mean" else g[b, k]
            raw += weight * a[b, k]
        if relu:
            raw = np.maximum(raw, 0.0)
        if output_size is not None:
            size = (output_size, output_size) if isinstance(output_size, int) else output_size
            raw = np_resize(raw, tuple(size))
        maps.append(np_normalize(raw, normalize))
    if not maps:
        size = (height, width) if output_size is None else output_size
        size = (size, size) if isinstance(size, int) else size
        return np.zeros((0, *size))
    return np.stack(maps)


def assert_matches(got: torch.Tensor, expected: np.ndarray, tol: float = 1e-12) -> None:
    assert got.dtype == torch.float64
    assert tuple(got.shape) == expected.shape, (tuple(got.shape), expected.shape)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=tol, atol=tol)


# --- closed form ---


# One channel, A = [[1, 2], [3, 4]], G = [[1, 0], [2, −1]].
ONE_A = f64([[[[1.0, 2.0], [3.0, 4.0]]]])
ONE_G = f64([[[[1.0, 0.0], [2.0, -1.0]]]])


def test_elementwise_by_hand() -> None:
    # G ⊙ A = [[1, 0], [6, −4]]; ReLU gives [[1, 0], [6, 0]].
    got = gradcam(ONE_A, ONE_G, weighting="elementwise", relu=False)
    torch.testing.assert_close(got, f64([[[1.0, 0.0], [6.0, -4.0]]]), rtol=0, atol=1e-12)
    got = gradcam(ONE_A, ONE_G, weighting="elementwise")
    torch.testing.assert_close(got, f64([[[1.0, 0.0], [6.0, 0.0]]]), rtol=0, atol=1e-12)
    # "max": [[1, 0], [6, 0]] / (6 + 1e-8).
    got = gradcam(ONE_A, ONE_G, weighting="elementwise", normalize="max")
    expected = f64([[[1.0, 0.0], [6.0, 0.0]]]) / (6 + 1e-8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_mean_weighting_by_hand() -> None:
    # α = mean G = (1 + 0 + 2 − 1) / 4 = 0.5, so raw = 0.5·A = [[0.5, 1], [1.5, 2]].
    got = gradcam(ONE_A, ONE_G)
    torch.testing.assert_close(got, f64([[[0.5, 1.0], [1.5, 2.0]]]), rtol=0, atol=1e-12)
    # Negating G gives α = −0.5: everything is below 0, so ReLU zeroes the whole map.
    assert gradcam(ONE_A, -ONE_G).abs().max().item() == 0.0
    torch.testing.assert_close(gradcam(ONE_A, -ONE_G, relu=False), -got, rtol=0, atol=1e-12)


def test_minmax_and_sum_by_hand() -> None:
    # Elementwise without ReLU: [[1, 0], [6, −4]]; min = −4, shifted = [[5, 4], [10, 0]],
    # "minmax" = shifted / (10 + 1e-8).
    got = gradcam(ONE_A, ONE_G, weighting="elementwise", relu=False, normalize="minmax")
    expected = f64([[[5.0, 4.0], [10.0, 0.0]]]) / (10 + 1e-8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # With ReLU: [[1, 0], [6, 0]], Σ = 7: "sum" = x / (7 + 1e-8) + 1e-8.
    got = gradcam(ONE_A, ONE_G, weighting="elementwise", normalize="sum")
    expected = f64([[[1.0, 0.0], [6.0, 0.0]]]) / (7 + 1e-8) + 1e-8
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    # "max" without ReLU divides by the max of the signed map: [[1, 0], [6, −4]] / (6 + 1e-8).
    got = gradcam(ONE_A, ONE_G, weighting="elementwise", relu=False, normalize="max")
    expected = f64([[[1.0, 0.0], [6.0, -4.0]]]) / (6 + 1e-8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_two_channels_two_maps_by_hand() -> None:
    # Map 0: α = (1, −1), raw = A₀ − A₁. Map 1: α = (0, 2), raw = 2·A₁.
    a = f64([[[[1.0, 2.0]], [[3.0, 0.0]]], [[[5.0, 5.0]], [[1.0, 2.0]]]])  # [2, 2, 1, 2]
    g = f64([[[[1.0, 1.0]], [[-2.0, 0.0]]], [[[0.0, 0.0]], [[2.0, 2.0]]]])
    got = gradcam(a, g, relu=False)
    torch.testing.assert_close(got, f64([[[-2.0, 2.0]], [[2.0, 4.0]]]), rtol=0, atol=1e-12)
    # Elementwise: map 0 = [1·1 − 2·3, 1·2 + 0·0] = [−5, 2]; map 1 = [2·1, 2·2] = [2, 4].
    got = gradcam(a, g, weighting="elementwise", relu=False)
    torch.testing.assert_close(got, f64([[[-5.0, 2.0]], [[2.0, 4.0]]]), rtol=0, atol=1e-12)


def test_bilinear_upsampling_by_hand() -> None:
    # A 1×2 map [0, 4] resized to 1×4: src = (d + ½)/2 − ½ = −¼ → 0, ¼, ¾, 1¼ → clamped to
    # the last pixel, so the values are 0, ¼·4 = 1, ¾·4 = 3 and 4.
    a = f64([[[[0.0, 4.0]]]])
    got = gradcam(a, torch.ones_like(a), output_size=(1, 4))
    torch.testing.assert_close(got, f64([[[0.0, 1.0, 3.0, 4.0]]]), rtol=0, atol=1e-12)
    # Down to 1×2 from [a, b, c, d]: src = (d + ½)·2 − ½ = ½, 2½: [(a+b)/2, (c+d)/2].
    a = f64([[[[1.0, 3.0, 4.0, 10.0]]]])
    got = gradcam(a, torch.ones_like(a), output_size=(1, 2))
    torch.testing.assert_close(got, f64([[[2.0, 7.0]]]), rtol=0, atol=1e-12)
    # ReLU comes before the resize: [−4, 4] → [0, 4] → [0, 1, 3, 4], not [−4, −2, 2, 4].
    a = f64([[[[-4.0, 4.0]]]])
    got = gradcam(a, torch.ones_like(a), weighting="elementwise", output_size=(1, 4))
    torch.testing.assert_close(got, f64([[[0.0, 1.0, 3.0, 4.0]]]), rtol=0, atol=1e-12)


def test_resize_comes_before_the_normalisation_by_hand() -> None:
    # [0, 4] → [0, 1, 3, 4] (Σ = 8) → "sum": x / (8 + 1e-8) + 1e-8.
    a = f64([[[[0.0, 4.0]]]])
    got = gradcam(a, torch.ones_like(a), output_size=(1, 4), normalize="sum")
    expected = f64([[[0.0, 1.0, 3.0, 4.0]]]) / (8 + 1e-8) + 1e-8
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_numpy_resize_matches_torch_interpolate() -> None:
    sizes = [(3, 3, 12, 12), (5, 4, 9, 7), (7, 7, 3, 5), (4, 6, 4, 6), (1, 3, 5, 2)]
    assert_np_resize_matches_interpolate(sizes)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("output_size", [None, 7, (9, 4)], ids=["none", "int", "pair"])
def test_numpy_oracle(weighting: str, relu: bool, normalize: str | None, output_size) -> None:
    a, g = rand(3, 4, 5, 6, seed=1), rand(3, 4, 5, 6, seed=2)  # non-square maps
    got = gradcam(
        a, g, weighting=weighting, relu=relu, normalize=normalize, output_size=output_size
    )
    assert_matches(got, np_gradcam(a, g, weighting, relu, normalize, output_size))


# --- equivalences and properties ---


def test_mean_equals_elementwise_for_spatially_constant_gradients() -> None:
    # With G_bk constant over (h, w), α_bk = G_bk and both weightings give Σ_k G_bk·A_bk.
    a = rand(2, 5, 4, 3, seed=3)
    g = rand(2, 5, 1, 1, seed=4).expand(2, 5, 4, 3)
    mean = gradcam(a, g, relu=False)
    torch.testing.assert_close(mean, gradcam(a, g, weighting="elementwise", relu=False))
    assert_matches(mean, np.einsum("bk,bkhw->bhw", g[:, :, 0, 0].numpy(), a.numpy()))


def test_output_size_equal_to_the_input_size_is_the_identity() -> None:
    a, g = rand(2, 3, 5, 4, seed=5), rand(2, 3, 5, 4, seed=6)
    torch.testing.assert_close(gradcam(a, g, output_size=(5, 4)), gradcam(a, g), rtol=0, atol=0)


def test_linear_in_the_activations_without_relu() -> None:
    a1, a2, g = rand(2, 3, 4, 4, seed=7), rand(2, 3, 4, 4, seed=8), rand(2, 3, 4, 4, seed=9)
    for weighting in WEIGHTINGS:
        lhs = gradcam(2.0 * a1 - 3.0 * a2, g, weighting=weighting, relu=False, output_size=6)
        rhs = 2.0 * gradcam(a1, g, weighting=weighting, relu=False, output_size=6)
        rhs = rhs - 3.0 * gradcam(a2, g, weighting=weighting, relu=False, output_size=6)
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_max_and_minmax_lie_in_the_unit_interval(weighting: str) -> None:
    a, g = rand(4, 3, 5, 5, seed=10), rand(4, 3, 5, 5, seed=11)
    for relu, normalize in [(True, "max"), (True, "minmax"), (False, "minmax")]:
        out = gradcam(a, g, weighting=weighting, relu=relu, normalize=normalize, output_size=8)
        assert out.min().item() >= 0.0 and out.max().item() <= 1.0
        # Every map reaches (almost) 1 at its maximum; minmax also reaches exactly 0.
        assert torch.all(out.amax(dim=(1, 2)) > 1 - 1e-6)
        if normalize == "minmax":
            assert torch.all(out.amin(dim=(1, 2)) == 0)


def test_sum_normalisation_sums_to_one_plus_the_floor() -> None:
    # Σ (x / (Σx + ε) + ε) = Σx / (Σx + ε) + H·W·ε.
    a, g = positive(3, 2, 4, 5, seed=12), positive(3, 2, 4, 5, seed=13)
    raw = gradcam(a, g)
    got = gradcam(a, g, normalize="sum").sum(dim=(1, 2))
    total = raw.sum(dim=(1, 2))
    torch.testing.assert_close(got, total / (total + EPS) + 20 * EPS, rtol=0, atol=1e-14)


@settings(max_examples=15, deadline=None)
@given(
    **sizes(batch=(1, 3), channels=(1, 4), height=(1, 6), width=(1, 6)),
    out=st.one_of(st.none(), st.integers(1, 9), shapes((1, 9), (1, 9))),
    weighting=st.sampled_from(WEIGHTINGS),
    relu=st.booleans(),
    normalize=st.sampled_from(NORMALIZATIONS),
    seed=SEEDS,
)
def test_property_matches_numpy_oracle(
    batch, channels, height, width, out, weighting, relu, normalize, seed
) -> None:
    a = rand(batch, channels, height, width, seed=seed)
    g = rand(batch, channels, height, width, seed=seed + 1)
    got = functional.gradcam(
        a,
        g,
        weighting=weighting,
        relu=relu,
        normalize=normalize,
        output_size=out,
        backend="reference",
    )
    expected = np_gradcam(a, g, weighting, relu, normalize, out)
    assert tuple(got.shape) == expected.shape
    resized = np_gradcam(a, g, weighting, relu, None, out)
    for b in range(batch):
        # "sum" without ReLU divides by a signed sum that can be close to 0: compare relative
        # to the map's largest value.
        scale = max(1.0, float(np.abs(expected[b]).max()))
        tol = 1e-11 * scale
        if normalize == "minmax":
            # F.interpolate computes a clamped edge pixel as (1 − λ)·x + λ·x, which can be an
            # ulp or two away from x; minmax divides such differences by (range + 1e-8), so a
            # map that is flat after resizing (a 1×1 map, say) shows up to ~ulp·max|x| / 1e-8.
            spread = float(resized[b].max() - resized[b].min())
            tol += 8 * 2.0**-52 * float(np.abs(resized[b]).max()) / (spread + EPS)
        torch.testing.assert_close(got[b], torch.from_numpy(expected[b]), rtol=0, atol=tol)


# --- gradients ---


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_gradcheck_without_relu(weighting: str, normalize: str | None) -> None:
    # Random normal values: the min and the max of each map are unique, so no tie or kink.
    a, g = (rand(2, 2, 2, 3, seed=seed) for seed in (20, 21))
    if normalize == "sum":  # keep the signed sum away from 0: shift every map upwards
        a, g = a + 3.0, g.abs() + 0.2
    fn = functools.partial(
        gradcam, weighting=weighting, relu=False, normalize=normalize, output_size=4
    )
    assert torch.autograd.gradcheck(fn, (a.requires_grad_(), g.requires_grad_()))


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_gradcheck_and_gradgradcheck_with_relu(weighting: str, normalize: str | None) -> None:
    # Strictly positive A and G keep every map above the ReLU kink. CGC trains through
    # Grad-CAM with create_graph=True, so the double backward must work too.
    a, g = (positive(2, 2, 2, 3, seed=seed).requires_grad_() for seed in (22, 23))
    fn = functools.partial(gradcam, weighting=weighting, normalize=normalize, output_size=(3, 4))
    assert torch.autograd.gradcheck(fn, (a, g))
    # fast_mode checks a random projection of the second derivative, which keeps it cheap.
    assert torch.autograd.gradgradcheck(fn, (a, g), fast_mode=True)


def test_gradients_by_hand() -> None:
    # raw = α·A with α = mean G; d Σ raw / dA = α everywhere, d Σ raw / dG_hw = Σ A / (H·W).
    a = ONE_A.clone().requires_grad_()
    g = ONE_G.clone().requires_grad_()
    gradcam(a, g, relu=False).sum().backward()
    torch.testing.assert_close(a.grad, torch.full_like(ONE_A, 0.5), rtol=0, atol=1e-15)
    torch.testing.assert_close(g.grad, torch.full_like(ONE_G, 2.5), rtol=0, atol=1e-15)


def test_gradients_flow_through_a_create_graph_gradcam() -> None:
    # CGC's pattern: G = ∂score/∂A with create_graph=True, then a loss of the map, then
    # backward into the parameters that produced both A and G.
    gen = torch.Generator().manual_seed(24)
    weight = torch.randn(3, 2, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
    a = F.conv2d(x, weight)
    score = (a**2).sum()
    (g,) = torch.autograd.grad(score, a, create_graph=True)
    gradcam(a, g, weighting="elementwise", relu=False).sum().backward()
    # Σ_hw Σ_k 2·A² = 2·score, and d score / dW = Σ 2·A·x, so the gradient is twice that.
    expected = torch.autograd.grad(2 * (F.conv2d(x, weight) ** 2).sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected, rtol=1e-12, atol=1e-12)


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_dtype_is_kept_and_values_match_fp64(dtype: torch.dtype, normalize: str | None) -> None:
    a, g = positive(2, 8, 4, 5, seed=30).to(dtype), positive(2, 8, 4, 5, seed=31).to(dtype)
    got = gradcam(a, g, normalize=normalize, output_size=(6, 7))
    assert got.dtype == dtype and got.shape == (2, 6, 7)
    # The oracle runs on the same (rounded) inputs in fp64; the arithmetic runs in fp32 (or
    # fp64), so the only errors are fp32 round-off and the final rounding to `dtype`.
    expected = torch.from_numpy(np_gradcam(a, g, "mean", True, normalize, (6, 7)))
    compute_eps = 1e-15 if dtype == torch.float64 else 1e-6
    tol = torch.finfo(dtype).eps + compute_eps
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max())


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("output_size", [None, 7, (3, 9)], ids=["none", "int", "pair"])
def test_empty_batch(normalize: str | None, output_size, device: torch.device) -> None:
    a = torch.zeros(0, 3, 4, 5, dtype=torch.float32, device=device, requires_grad=True)
    out = functional.gradcam(a, torch.zeros_like(a), normalize=normalize, output_size=output_size)
    expected = {None: (4, 5), 7: (7, 7), (3, 9): (3, 9)}[output_size]
    assert out.shape == (0, *expected) and out.dtype == torch.float32
    assert out.device.type == device.type
    out.sum().backward()  # an empty map still has a graph
    assert a.grad is not None and a.grad.shape == a.shape


def test_zero_channels_give_zero_maps() -> None:
    a = torch.zeros(2, 0, 3, 4, dtype=torch.float64)
    assert gradcam(a, a, relu=False).abs().max().item() == 0.0
    assert gradcam(a, a, normalize="minmax").abs().max().item() == 0.0


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_constant_and_zero_maps_stay_finite(weighting: str) -> None:
    # A constant map (G = 1, A = 2 on one channel): minmax is 0 everywhere, not 0/0.
    a = torch.full((2, 1, 3, 4), 2.0, dtype=torch.float64)
    g = torch.ones_like(a)
    assert gradcam(a, g, weighting=weighting, normalize="minmax").abs().max().item() == 0.0
    # "max" of a constant c is c / (c + 1e-8); of an all-zero map it is 0.
    got = gradcam(a, g, weighting=weighting, normalize="max")
    torch.testing.assert_close(got, torch.full_like(got, 2 / (2 + EPS)), rtol=0, atol=1e-15)
    zero = torch.zeros_like(a)
    for normalize in ("max", "minmax"):
        assert gradcam(zero, g, weighting=weighting, normalize=normalize).abs().max().item() == 0
    # "sum" of an all-zero map is the floor 1e-8 everywhere; and all of it is finite in fp16.
    got = gradcam(zero, g, weighting=weighting, normalize="sum")
    torch.testing.assert_close(got, torch.full_like(got, EPS), rtol=0, atol=0)
    for normalize in NORMALIZATIONS:
        out = gradcam(zero.half(), g.half(), weighting=weighting, normalize=normalize)
        assert torch.isfinite(out).all()


def test_constant_map_gradients_are_finite() -> None:
    a = torch.full((1, 2, 3, 3), 0.5, dtype=torch.float64, requires_grad=True)
    g = torch.ones_like(a, requires_grad=True)
    for normalize in ("max", "minmax", "sum"):
        ga, gg = torch.autograd.grad(gradcam(a, g, normalize=normalize).sum(), (a, g))
        assert torch.isfinite(ga).all() and torch.isfinite(gg).all()


def test_output_is_on_the_input_device(device: torch.device) -> None:
    a = rand(2, 3, 4, 4, seed=35).to(device)
    out = functional.gradcam(a, a, normalize="minmax", output_size=6)
    assert out.device.type == device.type
    assert_matches(out.cpu(), np_gradcam(a.cpu(), a.cpu(), normalize="minmax", output_size=6))


# --- validation ---

A = rand(2, 3, 4, 5, seed=40)
G = rand(2, 3, 4, 5, seed=41)
NAN = float("nan")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"activations": A.numpy()}, TypeError, "activations must be a torch.Tensor"),
        ({"activations": A.long()}, TypeError, "activations must be a floating-point tensor"),
        ({"activations": A[0]}, ValueError, r"activations must have shape \[B, K, H, W\]"),
        ({"activations": A[None]}, ValueError, r"activations must have shape \[B, K, H, W\]"),
        ({"activations": A * NAN}, ValueError, "activations contains NaN"),
        ({"activations": A / 0}, ValueError, "activations contains NaN or infinite"),
        ({"gradients": None}, TypeError, "gradients must be a torch.Tensor"),
        ({"gradients": G.int()}, TypeError, "gradients must be a floating-point tensor"),
        ({"gradients": G[0]}, ValueError, "gradients must have shape"),
        ({"gradients": G[:, :2]}, ValueError, r"gradients must have the shape of activations"),
        ({"gradients": G.transpose(2, 3)}, ValueError, r"shape of activations, \(2, 3, 4, 5\)"),
        ({"gradients": G.float()}, TypeError, "gradients has dtype torch.float32 but activ"),
        ({"gradients": G.to("meta")}, ValueError, "gradients is on meta but activations is on"),
        ({"gradients": G * NAN}, ValueError, "gradients contains NaN"),
        ({"weighting": "sum"}, ValueError, "weighting must be one of 'mean', 'elementwise'"),
        ({"weighting": None}, ValueError, "weighting must be one of"),
        ({"relu": "yes"}, ValueError, "relu must be one of True, False"),
        ({"normalize": "l2"}, ValueError, "normalize must be one of None, 'max', 'minmax'"),
        ({"normalize": False}, ValueError, "normalize must be one of"),
        ({"output_size": 0}, ValueError, "output_size must be > 0"),
        ({"output_size": -3}, ValueError, "output_size must be > 0"),
        ({"output_size": (4, 0)}, ValueError, "output_size must be > 0"),
        ({"output_size": (4,)}, ValueError, "output_size must be an int or a pair"),
        ({"output_size": (4, 5, 6)}, ValueError, "output_size must be an int or a pair"),
        ({"output_size": 2.5}, TypeError, "output_size must be an int, got float"),
        ({"output_size": (4, 2.0)}, TypeError, "output_size must be an int, got float"),
        ({"output_size": True}, TypeError, "output_size must be an int, got bool"),
        ({"output_size": "4"}, TypeError, "output_size must be an int, got str"),
        ({"activations": A[:, :, :0]}, ValueError, "activations must have a height and a width"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    assert_bad_input_raises("gradcam", {"activations": A, "gradients": G}, kwargs, error, match)


def test_activations_on_another_device_than_gradients() -> None:
    with pytest.raises(ValueError, match="gradients is on cpu but activations is on meta"):
        functional.gradcam(A.to("meta"), G, backend="reference")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    a = A.clone()
    a[0, 0, 0, 0] = NAN
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    out = gradcam(a, G, relu=False)
    assert out[0].isnan().any() and not out[1].isnan().any()  # NaN stays in its own map


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    got = unless_cpp_is_refused(
        lambda: amc_kernels.gradcam(A, G, normalize="minmax", output_size=7, backend="cpp")
    )
    if got is not None:
        assert_matches(got, np_gradcam(A, G, normalize="minmax", output_size=7))
