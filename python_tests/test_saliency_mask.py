from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import amc_kernels
from amc_kernels import functional
from amc_kernels.reference.gradcam import normalize_maps, resize_maps

# --- cpp backend ---
# The kernel computes e = minmax(resize(s)) in the saliency's compute dtype with the
# reference's arithmetic, but torch's own resize may fuse a multiply-add (FMA) where the kernel
# rounds twice: e can differ by an ulp. A keep decision can then differ only for a pixel within
# an ulp of the threshold, or within an ulp of the k-th largest e (top_fraction). The tests
# compare decisions exactly everywhere else, and use exactly representable resizes (integer
# saliency, scale factors 1, 2 and 4) where ties and exact equality matter.

CPP_MASK_DTYPES = [
    pytest.param(dtype, id=str(dtype)[6:])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
]
CPP_MASK_SHAPES = {
    # (B, C, H, W, h, w): one pixel, odd up-sampling, down-sampling, no resize
    "1x1": (1, 1, 1, 1, 1, 1),
    "up-odd": (3, 3, 13, 11, 5, 4),
    "down": (2, 2, 6, 5, 9, 7),
    "same": (2, 1, 7, 8, 7, 8),
}
CPP_MASK_NEAR = 1e-5  # |e − boundary| below which a decision may follow the rounding


def cpp_mask_available() -> bool:
    from amc_kernels import _extension

    return _extension.available()


needs_cpp_mask = pytest.mark.skipif(not cpp_mask_available(), reason="amc_kernels._C is not built")


def cpp_mask_inputs(
    shape: tuple, seed: int = 0, dtype: torch.dtype = torch.float32, sal_dtype: torch.dtype = None
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    saliency = torch.rand(batch, h, w, generator=gen, dtype=torch.float64)
    return images.to(dtype), saliency.to(sal_dtype or dtype)


def cpp_mask_e(images: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """The reference's normalised saliency e in fp64 (the distance of a pixel to a boundary)."""
    return normalize_maps(resize_maps(saliency.double(), tuple(images.shape[2:])), "minmax")


def assert_cpp_mask_matches(
    images: torch.Tensor, saliency: torch.Tensor, fill: float = -2.0, **kwargs: object
) -> None:
    """Keep masks agree except within CPP_MASK_NEAR of the boundary; images follow the mask."""
    masked, keep = functional.saliency_mask(images, saliency, fill=fill, **kwargs, backend="cpp")
    ref_masked, ref_keep = functional.saliency_mask(
        images, saliency, fill=fill, **kwargs, backend="reference"
    )
    assert keep.dtype == torch.bool and masked.dtype == images.dtype
    assert keep.shape == ref_keep.shape and masked.shape == ref_masked.shape
    e = cpp_mask_e(images, saliency).flatten(1)
    if kwargs.get("top_fraction") is None:
        boundary = torch.full((e.shape[0], 1), float(kwargs.get("threshold", 0.5)), dtype=e.dtype)
    else:
        # the k-th largest e per image; both masks keep exactly k pixels
        k = int(kwargs["top_fraction"] * e.shape[1] + 0.5)
        assert bool((keep.flatten(1).sum(1) == k).all())
        boundary = e.sort(dim=1, descending=True).values[:, max(k - 1, 0)][:, None]
    differs = keep.flatten(1) != ref_keep.flatten(1)
    near = (e - boundary).abs() < CPP_MASK_NEAR
    assert not bool((differs & ~near).any()), "keep differs away from the decision boundary"
    expected = torch.where(keep[:, None], images, torch.full_like(images, fill))
    assert torch.equal(masked, expected)


@pytest.mark.cpp
@needs_cpp_mask
@pytest.mark.parametrize("dtype", CPP_MASK_DTYPES)
@pytest.mark.parametrize("shape", list(CPP_MASK_SHAPES.values()), ids=list(CPP_MASK_SHAPES))
@pytest.mark.parametrize(
    "rule", [{"threshold": 0.5}, {"threshold": 0.2}, {"top_fraction": 0.15}], ids=str
)
def test_cpp_mask_matches_reference(dtype: torch.dtype, shape: tuple, rule: dict) -> None:
    images, saliency = cpp_mask_inputs(shape, seed=sum(shape), dtype=dtype)
    assert_cpp_mask_matches(images, saliency, **rule)


@pytest.mark.cpp
@needs_cpp_mask
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.15, 0.5, 0.73, 1.0])
def test_cpp_mask_top_fraction_ties_go_to_the_lower_index_exactly(
    scale: int, fraction: float
) -> None:
    # Integer saliency in few levels, resized by 1, 2 or 4: every weight is a multiple of 1/8,
    # so e is computed exactly by both and ties abound; the masks must be identical.
    gen = torch.Generator().manual_seed(scale)
    saliency = torch.randint(4, (3, 5, 6), generator=gen).float()
    images = torch.randn(3, 2, 5 * scale, 6 * scale, generator=gen)
    masked, keep = functional.saliency_mask(images, saliency, top_fraction=fraction, backend="cpp")
    expected = functional.saliency_mask(
        images, saliency, top_fraction=fraction, backend="reference"
    )
    assert torch.equal(keep, expected[1]) and torch.equal(masked, expected[0])


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_threshold_compares_in_the_saliency_dtype() -> None:
    # e = fp32(1/3) at the second pixel; torch compares an fp32 tensor with the threshold
    # rounded to fp32, so e > 1/3 is False there although fp32(1/3) > 1/3 in fp64.
    saliency = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # e = 0, 1/3, 2/3, 1 at the image size
    images = torch.arange(4.0).view(1, 1, 2, 2)
    for threshold in (1 / 3, 2 / 3, 0.0, 1.0, -1.0):
        _, keep = functional.saliency_mask(images, saliency, threshold=threshold, backend="cpp")
        _, expected = functional.saliency_mask(
            images, saliency, threshold=threshold, backend="reference"
        )
        assert torch.equal(keep, expected), threshold


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_saliency_and_images_in_different_dtypes() -> None:
    for image_dtype, sal_dtype in ((torch.float32, torch.float64), (torch.bfloat16, torch.float16)):
        images, saliency = cpp_mask_inputs(
            (2, 3, 9, 7, 4, 3), seed=3, dtype=image_dtype, sal_dtype=sal_dtype
        )
        assert_cpp_mask_matches(images, saliency, threshold=0.4)
        assert_cpp_mask_matches(images, saliency, top_fraction=0.3)


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_non_contiguous_inputs() -> None:
    images, saliency = cpp_mask_inputs((3, 3, 10, 12, 4, 5), seed=5)
    images_view = images.contiguous(memory_format=torch.channels_last)
    saliency_view = saliency.transpose(1, 2).contiguous().transpose(1, 2)
    assert not images_view.is_contiguous() and not saliency_view.is_contiguous()
    for rule in ({"threshold": 0.5}, {"top_fraction": 0.2}):
        got = functional.saliency_mask(images_view, saliency_view, **rule, backend="cpp")
        expected = functional.saliency_mask(images, saliency, **rule, backend="cpp")
        assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
        assert_cpp_mask_matches(images_view, saliency_view, **rule)


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_constant_saliency_and_empty_batch() -> None:
    images = torch.randn(2, 3, 6, 6)
    constant = torch.full((2, 3, 3), 0.7)  # e = 0 everywhere: nothing above 0.5, k by index
    for rule in ({"threshold": 0.5}, {"threshold": -0.1}, {"top_fraction": 0.25}):
        got = functional.saliency_mask(images, constant, **rule, backend="cpp")
        expected = functional.saliency_mask(images, constant, **rule, backend="reference")
        assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
    masked, keep = functional.saliency_mask(
        images[:0], constant[:0], top_fraction=0.5, backend="cpp"
    )
    assert masked.shape == (0, 3, 6, 6) and keep.shape == (0, 6, 6) and keep.dtype == torch.bool


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_has_no_gradient() -> None:
    images, saliency = cpp_mask_inputs((2, 3, 5, 5, 3, 3))
    masked, keep = functional.saliency_mask(
        images.requires_grad_(), saliency.requires_grad_(), backend="cpp"
    )
    assert not masked.requires_grad and not keep.requires_grad


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_opcheck() -> None:
    images, saliency = cpp_mask_inputs((2, 3, 7, 6, 3, 4), seed=7)
    for top_fraction in (-1.0, 0.3):
        args = (images, saliency, 0.5, top_fraction, -1.0)
        opcheck(torch.ops.amc_kernels.saliency_mask_fwd.default, args)


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_compiles_fullgraph() -> None:
    images, saliency = cpp_mask_inputs((2, 3, 7, 6, 3, 4), seed=9)

    def masked_sum(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked, keep = functional.saliency_mask(x, s, top_fraction=0.4, backend="cpp")
        return masked.sum(), keep.sum()

    compiled = torch.compile(masked_sum, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(images, saliency), masked_sum(images, saliency))


@pytest.mark.cpp
@needs_cpp_mask
@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(
        st.integers(1, 3),
        st.integers(1, 3),
        st.integers(1, 12),
        st.integers(1, 12),
        st.integers(1, 6),
        st.integers(1, 6),
    ),
    threshold=st.floats(-0.5, 1.5),
    top_fraction=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_min=True)),
    fp64=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpp_mask_property_matches_reference(
    shape: tuple, threshold: float, top_fraction: float, fp64: bool, seed: int
) -> None:
    images, saliency = cpp_mask_inputs(
        shape, seed=seed, dtype=torch.float64 if fp64 else torch.float32
    )
    # A flat resized map (a 1×1 saliency, or a one-pixel axis meeting a one-pixel output) has
    # e = rounding noise / (noise + 1e-8): no dtype, not even the reference's, decides it.
    resized = resize_maps(saliency.double(), tuple(images.shape[2:]))
    assume(bool((resized.amax(dim=(1, 2)) - resized.amin(dim=(1, 2)) > 1e-6).all()))
    assert_cpp_mask_matches(images, saliency, threshold=threshold, top_fraction=top_fraction)


@pytest.mark.cpp
@needs_cpp_mask
def test_cpp_mask_is_the_automatic_choice_on_cpu() -> None:
    from amc_kernels import _dispatch

    images, saliency = cpp_mask_inputs((2, 3, 5, 5, 3, 3))
    options = {"threshold": 0.5, "top_fraction": None, "fill": 0.0}
    shapes = (tuple(images.shape), tuple(saliency.shape))
    call = _dispatch.Call("saliency_mask", images.device, images.dtype, shapes, options)
    assert _dispatch.select(call).backend == "cpp"
    got = amc_kernels.saliency_mask(images, saliency)
    expected = functional.saliency_mask(images, saliency, backend="cpp")
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
