"""saliency_mask (docs/design.md#27-saliency_mask): closed forms, a numpy oracle, no gradients,
dtypes, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import SEEDS, assert_bad_input_raises, sizes, unless_cpp_is_refused
from conftest import DTYPE_IDS, f64, intercept_dispatch, rand
from hypothesis import given, settings
from hypothesis import strategies as st
from resize_oracle import assert_np_resize_matches_interpolate, np_resize

import amc_kernels
from amc_kernels import functional

EPS = 1e-8  # ExCon's min–max constant


def mask(images, saliency, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return functional.saliency_mask(images, saliency, backend="reference", **kwargs)


# The numpy oracle: bilinear resampling (align_corners=False) as per-axis matrices, ExCon's
# min–max, then the threshold or the top k by a stable argsort. It never calls
# amc_kernels.reference or F.interpolate.


def np_minmax(saliency: torch.Tensor, height: int, width: int) -> np.ndarray:
    """e = (s − min) / (max(s − min) + 1e-8) of the saliency resized to height × width."""
    out = []
    for s in saliency.double().numpy():
        shifted = np_resize(s, (height, width))
        shifted = shifted - shifted.min()
        out.append(shifted / (shifted.max() + EPS))
    return np.stack(out) if out else np.zeros((0, height, width))


def np_saliency_mask(
    images: torch.Tensor,
    saliency: torch.Tensor,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    img = images.double().numpy()
    batch, _, height, width = img.shape
    e = np_minmax(saliency, height, width)
    if top_fraction is None:
        keep = e > threshold
    else:
        k = math.floor(top_fraction * height * width + 0.5)
        keep = np.zeros((batch, height * width), dtype=bool)
        for b in range(batch):
            order = np.argsort(-e[b].ravel(), kind="stable")  # ties: the lower flat index first
            keep[b, order[:k]] = True
        keep = keep.reshape(batch, height, width)
    return np.where(keep[:, None], img, fill), keep


def assert_matches(got: tuple[torch.Tensor, torch.Tensor], expected: tuple) -> None:
    masked, keep = got
    assert keep.dtype == torch.bool
    assert tuple(keep.shape) == expected[1].shape
    np.testing.assert_array_equal(keep.numpy(), expected[1])
    np.testing.assert_array_equal(masked.double().numpy(), expected[0])


def assert_matches_up_to_round_off(
    got: tuple[torch.Tensor, torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    fill: float = 0.0,
) -> None:
    """Like assert_matches, but pixels whose e lies within round-off of the decision boundary
    may go either way. F.interpolate computes a clamped edge pixel as (1 − λ)·x + λ·x, not x,
    so a saliency that is flat after resampling gets e ≈ round-off / 1e-8 rather than exact
    ties. Everything else must agree, top_fraction must keep exactly k pixels, and the masked
    images must follow the returned mask."""
    masked, keep = got
    batch, _, height, width = images.shape
    assert keep.dtype == torch.bool and keep.shape == (batch, height, width)
    e = np_minmax(saliency, height, width)
    expected = np_saliency_mask(images, saliency, threshold, top_fraction, fill)[1]
    for b in range(batch):
        # An ulp or two of the resized map, divided by (range + 1e-8) in the min–max.
        resized = np_resize(saliency[b].double().numpy(), (height, width))
        spread = float(resized.max() - resized.min())
        band = 1e-13 + 8 * 2.0**-52 * float(np.abs(resized).max()) / (spread + EPS)
        if top_fraction is None:
            low = high = threshold
        else:
            k = math.floor(top_fraction * height * width + 0.5)
            assert int(keep[b].sum()) == k
            ranked = np.sort(e[b].ravel())[::-1]
            high = ranked[k - 1] if k > 0 else np.inf  # the least salient kept pixel
            low = ranked[k] if k < height * width else -np.inf  # the most salient dropped one
        unsure = (e[b] >= low - band) & (e[b] <= high + band)
        np.testing.assert_array_equal(keep[b].numpy()[~unsure], expected[b][~unsure])
    np.testing.assert_array_equal(
        masked.double().numpy(), np.where(keep.numpy()[:, None], images.double().numpy(), fill)
    )


# --- closed form ---


IMAGE = f64([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])  # [1, 2, 2, 2]
SAL = f64([[[0.0, 3.0], [1.0, 2.0]]])  # e = 0, 3/(3+ε), 1/(3+ε), 2/(3+ε)


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [
        (0.5, [[False, True], [False, True]]),  # 3/3 and 2/3 > 0.5
        (0.25, [[False, True], [True, True]]),  # 1/3 > 0.25 too
        (0.7, [[False, True], [False, False]]),
        (0.0, [[False, True], [True, True]]),  # all but the least salient (e = 0)
        (1.0, [[False, False], [False, False]]),  # max e = 3/(3 + ε) < 1
    ],
)
def test_threshold_by_hand(threshold: float, kept: list) -> None:
    masked, keep = mask(IMAGE, SAL, threshold=threshold, fill=-9.0)
    expected = torch.tensor(kept)
    assert torch.equal(keep, expected[None])
    assert torch.equal(masked, torch.where(expected, IMAGE, torch.full_like(IMAGE, -9.0)))


@pytest.mark.parametrize(
    ("fraction", "kept"),
    [
        (0.5, [[False, True], [False, True]]),  # k = ⌊2 + ½⌋ = 2: saliencies 3 and 2
        (0.3, [[False, True], [False, False]]),  # k = ⌊1.2 + ½⌋ = 1
        (0.375, [[False, True], [False, True]]),  # k = ⌊1.5 + ½⌋ = 2: a half rounds up
        (0.125, [[False, True], [False, False]]),  # k = ⌊0.5 + ½⌋ = 1
        (0.1, [[False, False], [False, False]]),  # k = ⌊0.4 + ½⌋ = 0
        (0.75, [[False, True], [True, True]]),  # k = 3
        (1.0, [[True, True], [True, True]]),
    ],
)
def test_top_fraction_by_hand(fraction: float, kept: list) -> None:
    masked, keep = mask(IMAGE, SAL, top_fraction=fraction)
    expected = torch.tensor(kept)
    assert torch.equal(keep, expected[None])
    assert torch.equal(masked, torch.where(expected, IMAGE, torch.zeros_like(IMAGE)))


def test_top_fraction_ties_go_to_the_lower_flat_index() -> None:
    # A constant saliency (2×2 → 2×3 resamples 7 to exactly 7): e = 0 / (0 + ε) = 0
    # everywhere, all tied. f = 0.5 keeps k = 3 pixels: flat indices 0, 1, 2 (the first row).
    images = torch.ones(1, 1, 2, 3, dtype=torch.float64)
    _, keep = mask(images, torch.full((1, 2, 2), 7.0, dtype=torch.float64), top_fraction=0.5)
    assert keep.tolist() == [[[True, True, True], [False, False, False]]]
    # Saliency 1, 2, 2, 1, 2, 0: the three 2s tie for the top; k = 2 keeps flat 1 and 2.
    sal = f64([[[1.0, 2.0, 2.0], [1.0, 2.0, 0.0]]])
    _, keep = mask(images, sal, top_fraction=2 / 6)
    assert keep.tolist() == [[[False, True, True], [False, False, False]]]
    # k = 4: the three 2s, then the first of the tied 1s (flat 0, not flat 3).
    _, keep = mask(images, sal, top_fraction=4 / 6)
    assert keep.tolist() == [[[True, True, True], [False, True, False]]]


def test_many_ties_on_a_large_image_go_to_the_lower_flat_index() -> None:
    # 32×32 saliency at the image size (no resampling, so the ties are exact): values in
    # {0, 1, 2}, and an all-zero map. The top 15 % (k = ⌊153.6 + ½⌋ = 154) must be the
    # largest values, ties broken by the lower flat index, as a stable sort does.
    gen = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 3, (1, 32, 32), generator=gen).double()
    saliency = torch.cat([levels, torch.zeros(1, 32, 32, dtype=torch.float64)])
    images = torch.ones(2, 1, 32, 32, dtype=torch.float64)
    _, keep = mask(images, saliency, top_fraction=0.15)
    assert keep.sum(dim=(1, 2)).tolist() == [154, 154]
    assert_matches(
        mask(images, saliency, top_fraction=0.15),
        np_saliency_mask(images, saliency, top_fraction=0.15),
    )
    assert keep[1].flatten()[:154].all() and not keep[1].flatten()[154:].any()


def test_threshold_is_strict_by_hand() -> None:
    # Saliency [0, 1, 2] at the image size: e = [0, 1/(2 + ε), 2/(2 + ε)], computed with the
    # same IEEE operations here. e > t is strict: t = 0 drops pixel 0; t = 1/(2 + ε) drops
    # pixel 1 as well.
    images = f64([[[[5.0, 6.0, 7.0]]]])
    saliency = f64([[[0.0, 1.0, 2.0]]])
    assert mask(images, saliency, threshold=0.0)[1].tolist() == [[[False, True, True]]]
    middle = 1.0 / (2.0 + EPS)
    assert mask(images, saliency, threshold=middle)[1].tolist() == [[[False, False, True]]]
    below = np.nextafter(middle, 0.0)
    assert mask(images, saliency, threshold=below)[1].tolist() == [[[False, True, True]]]


def test_upsampled_saliency_by_hand() -> None:
    # Saliency 1×2 [0, 4] for a 1×4 image: up = [0, 1, 3, 4] (src = −¼ → 0, ¼, ¾, 1¼ →
    # clamped), e = [0, ¼, ¾, 1]·4/(4 + ε): e > 0.5 keeps columns 2 and 3.
    images = f64([[[[10.0, 20.0, 30.0, 40.0]]]])
    masked, keep = mask(images, f64([[[0.0, 4.0]]]))
    assert keep.tolist() == [[[False, False, True, True]]]
    assert masked.tolist() == [[[[0.0, 0.0, 30.0, 40.0]]]]
    # e > 0.2 also keeps column 1 (¼); the top quarter (k = 1) keeps column 3 only.
    assert mask(images, f64([[[0.0, 4.0]]]), threshold=0.2)[1].tolist() == [
        [[False, True, True, True]]
    ]
    assert mask(images, f64([[[0.0, 4.0]]]), top_fraction=0.25)[1].tolist() == [
        [[False, False, False, True]]
    ]


def test_downsampled_saliency_by_hand() -> None:
    # 4×4 → 2×2: src = (d + ½)·2 − ½ = ½, 2½, so each output is the mean of a 2×2 block:
    # [[0, 1], [2, 3]] here, the same e as SAL's pixels rearranged.
    block = f64(
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]]
    )
    _, keep = mask(IMAGE, block[None])
    assert keep.tolist() == [[[False, False], [True, True]]]


def test_numpy_resize_matches_torch_interpolate() -> None:
    assert_np_resize_matches_interpolate(
        [(5, 4, 12, 10), (4, 4, 32, 32), (7, 9, 3, 5), (3, 3, 3, 3)]
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 0.3, "fill": 2.5},
        {"threshold": 0.8, "fill": -1.0},
        {"top_fraction": 0.15},
        {"top_fraction": 0.5, "fill": 9.0},
        {"top_fraction": 1.0},
    ],
)
def test_numpy_oracle(kwargs: dict) -> None:
    images, saliency = rand(3, 3, 12, 10, seed=1), rand(3, 5, 4, seed=2)
    assert_matches(mask(images, saliency, **kwargs), np_saliency_mask(images, saliency, **kwargs))


# --- equivalences and properties ---


@pytest.mark.parametrize("kwargs", [{"threshold": 0.4}, {"top_fraction": 0.2}])
def test_every_channel_is_masked_identically(kwargs: dict) -> None:
    images, saliency = rand(2, 5, 8, 6, seed=3), rand(2, 3, 3, seed=4)
    masked, keep = mask(images, saliency, fill=-3.0, **kwargs)
    assert keep.shape == (2, 8, 6) and keep.dtype == torch.bool
    assert 0 < int(keep.sum()) < keep.numel()
    for c in range(5):
        assert torch.equal(masked[:, c] == -3.0, ~keep)  # images never hold −3.0 exactly
        assert torch.equal(masked[:, c][keep], images[:, c][keep])  # kept pixels: bit for bit


@pytest.mark.parametrize(("height", "width"), [(12, 10), (7, 7), (1, 9), (32, 32)])
@pytest.mark.parametrize("fraction", [0.01, 0.15, 0.5, 0.99])
def test_top_fraction_keeps_exactly_k_pixels_per_image(
    height: int, width: int, fraction: float
) -> None:
    images, saliency = rand(3, 1, height, width, seed=5), rand(3, 4, 5, seed=6)
    _, keep = mask(images, saliency, top_fraction=fraction)
    k = math.floor(fraction * height * width + 0.5)
    assert keep.sum(dim=(1, 2)).tolist() == [k] * 3
    # And they are the most salient k: every kept pixel's e is ≥ every dropped pixel's.
    e = np.stack([np_resize(s, (height, width)) for s in saliency.numpy()])
    for b in range(3):
        kept, dropped = e[b][keep[b].numpy()], e[b][~keep[b].numpy()]
        if len(kept) and len(dropped):
            assert kept.min() >= dropped.max()


def test_a_higher_threshold_keeps_a_subset() -> None:
    images, saliency = rand(2, 1, 9, 9, seed=7), rand(2, 4, 4, seed=8)
    previous = torch.ones(2, 9, 9, dtype=torch.bool)
    counts = []
    for threshold in (0.0, 0.2, 0.5, 0.8, 1.0):
        _, keep = mask(images, saliency, threshold=threshold)
        assert not (keep & ~previous).any()
        previous = keep
        counts.append(int(keep.sum()))
    assert 2 * 75 < counts[0] < 2 * 81 and counts[-1] == 0 and len(set(counts)) > 3


def test_invariant_to_a_positive_affine_change_of_the_saliency() -> None:
    # (a·s + b − min) / (max(a·s + b − min) + ε) differs from e only through ε/a, far below
    # the gaps between random saliency values; the kept pixels are the same.
    images, saliency = rand(3, 2, 10, 8, seed=9), rand(3, 4, 4, seed=10)
    for kwargs in ({"threshold": 0.5}, {"top_fraction": 0.3}):
        _, keep = mask(images, saliency, **kwargs)
        assert torch.equal(mask(images, 5.0 * saliency - 2.0, **kwargs)[1], keep)
        assert torch.equal(mask(images, 0.01 * saliency + 100.0, **kwargs)[1], keep)
        # A negative scale reverses the order: the most salient pixels become the least.
        if "top_fraction" in kwargs:
            flipped = mask(images, -saliency, **kwargs)[1]
            assert not (flipped & keep).any()


def test_each_image_uses_only_its_own_saliency() -> None:
    images, saliency = rand(3, 2, 6, 6, seed=11), rand(3, 3, 3, seed=12)
    masked, keep = mask(images, saliency, top_fraction=0.3)
    for b in range(3):
        one = mask(images[b : b + 1], saliency[b : b + 1], top_fraction=0.3)
        assert torch.equal(one[0], masked[b : b + 1]) and torch.equal(one[1], keep[b : b + 1])


@settings(max_examples=15, deadline=None)
@given(
    **sizes(
        batch=(1, 3), channels=(1, 3), height=(1, 12), width=(1, 12), sal_h=(1, 6), sal_w=(1, 6)
    ),
    mode=st.one_of(
        st.builds(lambda t: {"threshold": t}, st.floats(0.0, 1.0)),
        st.builds(lambda f: {"top_fraction": f}, st.floats(0.01, 1.0)),
    ),
    fill=st.floats(-3.0, 3.0),
    seed=SEEDS,
)
def test_property_matches_numpy_oracle(
    batch, channels, height, width, sal_h, sal_w, mode, fill, seed
) -> None:
    # Random continuous saliency: pixels tie only where resampling copies a value (see
    # assert_matches_up_to_round_off).
    images = rand(batch, channels, height, width, seed=seed)
    saliency = rand(batch, sal_h, sal_w, seed=seed + 1)
    got = functional.saliency_mask(images, saliency, fill=fill, backend="reference", **mode)
    assert_matches_up_to_round_off(got, images, saliency, fill=fill, **mode)


# --- gradients ---


def test_outputs_do_not_require_grad() -> None:
    images = rand(2, 3, 6, 5, seed=20).requires_grad_()
    saliency = rand(2, 3, 3, seed=21).requires_grad_()
    for kwargs in ({}, {"top_fraction": 0.2}):
        masked, keep = functional.saliency_mask(images, saliency, **kwargs)
        assert not masked.requires_grad and not keep.requires_grad
        assert masked.grad_fn is None and keep.grad_fn is None
        # The values are still right: the no-grad path is not a different computation.
        assert_matches(
            (masked.detach(), keep), np_saliency_mask(images.detach(), saliency.detach(), **kwargs)
        )


def test_grad_mode_outside_is_left_alone() -> None:
    images = rand(1, 1, 4, 4, seed=22).requires_grad_()
    mask(images, rand(1, 2, 2, seed=23))
    assert torch.is_grad_enabled()
    assert (images * 2).sum().requires_grad


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
@pytest.mark.parametrize("sal_dtype", DTYPE_IDS)
def test_images_dtype_is_kept(dtype: torch.dtype, sal_dtype: torch.dtype) -> None:
    # A saliency ramp rounds exactly in every dtype (small integers), so the kept set is known.
    images = rand(2, 3, 6, 6, seed=24, dtype=dtype)
    saliency = torch.arange(2 * 36, dtype=torch.float64).view(2, 6, 6).to(sal_dtype)
    for kwargs in ({"threshold": 0.5}, {"top_fraction": 0.25}):
        masked, keep = mask(images, saliency, fill=0.25, **kwargs)
        assert masked.dtype == dtype and keep.dtype == torch.bool and keep.shape == (2, 6, 6)
        expected = np_saliency_mask(images, saliency, fill=0.25, **kwargs)
        assert_matches((masked, keep), expected)  # 0.25 and the kept pixels are exact


@pytest.mark.parametrize("kwargs", [{}, {"top_fraction": 0.3}])
def test_empty_batch(kwargs: dict, device: torch.device) -> None:
    images = torch.zeros(0, 3, 6, 5, dtype=torch.float16, device=device)
    masked, keep = functional.saliency_mask(images, torch.zeros(0, 2, 2, device=device), **kwargs)
    assert masked.shape == (0, 3, 6, 5) and masked.dtype == torch.float16
    assert keep.shape == (0, 6, 5) and keep.dtype == torch.bool
    assert masked.device.type == keep.device.type == device.type


def test_constant_saliency_has_no_nan() -> None:
    # (s − min) is 0 up to the resampling's round-off (~1e-16), and divided by (0 + ε) it
    # stays below ~1e-7: nothing passes e > 0.5, and nothing is NaN (no 0 / 0).
    images = rand(2, 3, 5, 5, seed=28)
    saliency = torch.full((2, 3, 3), 4.0, dtype=torch.float64)
    masked, keep = mask(images, saliency)
    assert not keep.any() and torch.equal(masked, torch.zeros_like(images))
    masked, keep = mask(images, saliency, threshold=0.0)  # e ≈ 0 everywhere: ≤ 0 where exact
    assert not masked.isnan().any()


def test_nan_in_images_is_masked_or_kept_like_any_value() -> None:
    # Only the saliency is read; an image value is selected, never inspected.
    images = IMAGE.clone()
    images[0, 0, 0, 0] = float("nan")  # a masked pixel
    images[0, 1, 0, 1] = float("inf")  # a kept pixel
    masked, _ = mask(images, SAL)
    assert masked[0, 0, 0, 0].item() == 0.0 and masked[0, 1, 0, 1].item() == float("inf")


def test_output_is_on_the_input_device(device: torch.device) -> None:
    images, saliency = rand(2, 3, 7, 6, seed=29).to(device), rand(2, 3, 3, seed=30).to(device)
    masked, keep = functional.saliency_mask(images, saliency, top_fraction=0.15)
    assert masked.device.type == keep.device.type == device.type
    assert_matches(
        (masked.cpu(), keep.cpu()),
        np_saliency_mask(images.cpu(), saliency.cpu(), top_fraction=0.15),
    )


# --- validation ---

IMAGES = rand(2, 3, 6, 5, seed=40)
SALIENCY = rand(2, 3, 3, seed=41)
NAN = float("nan")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"images": IMAGES.numpy()}, TypeError, "images must be a torch.Tensor"),
        ({"images": IMAGES.to(torch.uint8)}, TypeError, "images must be a floating-point tensor"),
        ({"images": IMAGES[0]}, ValueError, r"images must have shape \[B, C, H, W\]"),
        ({"images": IMAGES[None]}, ValueError, r"images must have shape \[B, C, H, W\]"),
        ({"images": IMAGES[:, :, :0]}, ValueError, "images must have a height and a width"),
        ({"images": IMAGES[:1]}, ValueError, "saliency has size 2 in dimension 0 but must have 1"),
        ({"saliency": [[0.0]]}, TypeError, "saliency must be a torch.Tensor"),
        ({"saliency": SALIENCY.long()}, TypeError, "saliency must be a floating-point tensor"),
        ({"saliency": SALIENCY[0]}, ValueError, r"saliency must have shape \[B, h, w\]"),
        ({"saliency": SALIENCY[:, None]}, ValueError, r"saliency must have shape \[B, h, w\]"),
        ({"saliency": SALIENCY[:1]}, ValueError, r"saliency has size 1 in dimension 0 .*one map"),
        ({"saliency": SALIENCY[:, :, :0]}, ValueError, "saliency must have a height and a width"),
        ({"saliency": SALIENCY.to("meta")}, ValueError, "saliency is on meta but images is on cpu"),
        ({"saliency": SALIENCY * NAN}, ValueError, "saliency contains NaN"),
        ({"saliency": SALIENCY / 0}, ValueError, "saliency contains NaN or infinite"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a real number, got str"),
        ({"threshold": None}, TypeError, "threshold must be a real number"),
        ({"threshold": True}, TypeError, "threshold must be a real number, got bool"),
        ({"threshold": torch.tensor(0.5)}, TypeError, "threshold must be a real number"),
        ({"threshold": NAN}, ValueError, "threshold must be finite"),
        ({"threshold": -0.1}, ValueError, r"threshold must be in \[0.0, 1.0\], got -0.1"),
        ({"threshold": 1.5}, ValueError, r"threshold must be in \[0.0, 1.0\], got 1.5"),
        ({"top_fraction": 0.0}, ValueError, r"top_fraction must be in \(0.0, 1.0\], got 0.0"),
        ({"top_fraction": -0.1}, ValueError, r"top_fraction must be in \(0.0, 1.0\]"),
        ({"top_fraction": 1.5}, ValueError, r"top_fraction must be in \(0.0, 1.0\]"),
        ({"top_fraction": NAN}, ValueError, "top_fraction must be finite"),
        ({"top_fraction": "0.15"}, TypeError, "top_fraction must be a real number"),
        ({"fill": "0"}, TypeError, "fill must be a real number"),
        ({"fill": NAN}, ValueError, "fill must be finite"),
        ({"fill": float("-inf")}, ValueError, "fill must be finite"),
        (
            {"fill": 1e300, "images": IMAGES.float()},
            ValueError,
            "fill = 1e.300 overflows the images' dtype torch.float32",
        ),
        (
            {"fill": -7e4, "images": IMAGES.half()},
            ValueError,
            r"fill = -70000.0 overflows the "
            r"images' dtype torch.float16 \(largest finite value 65504\)",
        ),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    positional = {"images": IMAGES, "saliency": SALIENCY}
    assert_bad_input_raises("saliency_mask", positional, kwargs, error, match)


def test_images_on_another_device() -> None:
    with pytest.raises(ValueError, match="saliency is on cpu but images is on meta"):
        functional.saliency_mask(IMAGES.to("meta"), SALIENCY, backend="reference")


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    saliency = SALIENCY.clone()
    saliency[1, 0, 0] = NAN
    with pytest.raises(ValueError, match="saliency contains NaN"):
        functional.saliency_mask(IMAGES, saliency)
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    calls = intercept_dispatch(monkeypatch)
    assert functional.saliency_mask(IMAGES, saliency, top_fraction=0.5) == "passed"
    assert calls == [("saliency_mask", {"threshold": 0.5, "top_fraction": 0.5, "fill": 0.0})]


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    got = unless_cpp_is_refused(
        lambda: amc_kernels.saliency_mask(IMAGES, SALIENCY, top_fraction=0.3, backend="cpp")
    )
    if got is not None:
        assert_matches(got, np_saliency_mask(IMAGES, SALIENCY, top_fraction=0.3))
