"""saliency_mask (docs/design.md#27-saliency_mask) on the cpp and triton backends: ties, the
threshold's dtype, mixed dtypes, keep decisions near the boundary, opcheck, against the
reference."""

from __future__ import annotations

import pytest
import torch
from _helpers import SEEDS, assert_cpp_is_the_automatic_choice, opcheck_utils, shapes
from conftest import needs_cpp, rand, triton_dtypes_and_sizes
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_saliency_mask import mask
from torch.library import opcheck

import amc_kernels
from amc_kernels import functional
from amc_kernels.reference.gradcam import normalize_maps, resize_maps
from amc_kernels.testing import MASK_NEAR, as_arguments, compare_masks

# --- cpp backend ---
# The kernel computes e = minmax(resize(s)) in the saliency's compute dtype with the
# reference's arithmetic, but torch's own resize may fuse a multiply-add (FMA) where the kernel
# rounds twice: e can differ by an ulp. A keep decision can then differ only for a pixel within
# an ulp of the threshold, or within an ulp of the k-th largest e (top_fraction). The tests
# compare decisions exactly everywhere else, and use exactly representable resizes (integer
# saliency, scale factors 1, 2 and 4) where ties and exact equality matter.

CPP_MASK_NEAR = MASK_NEAR  # |e − boundary| below which a decision may follow the rounding


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
    arguments = as_arguments("saliency_mask", (images, saliency), {"fill": fill, **kwargs})
    ok, differing, _ = compare_masks("cpp", arguments)
    assert ok, f"{differing:.0f} keep decisions differ away from the decision boundary"


@pytest.mark.cpp
@needs_cpp
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
@needs_cpp
def test_cpp_mask_threshold_compares_in_the_saliency_dtype() -> None:
    # e = fp32(1/3) at the second pixel; torch compares an fp32 tensor with the threshold
    # rounded to fp32, so e > 1/3 is False there although fp32(1/3) > 1/3 in fp64.
    saliency = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # e = 0, 1/3, 2/3, 1 at the image size
    images = torch.arange(4.0).view(1, 1, 2, 2)
    for threshold in (1 / 3, 2 / 3, 0.0, 1.0):
        _, keep = functional.saliency_mask(images, saliency, threshold=threshold, backend="cpp")
        _, expected = functional.saliency_mask(
            images, saliency, threshold=threshold, backend="reference"
        )
        assert torch.equal(keep, expected), threshold


@pytest.mark.cpp
@needs_cpp
def test_cpp_mask_saliency_and_images_in_different_dtypes() -> None:
    for image_dtype, sal_dtype in ((torch.float32, torch.float64), (torch.bfloat16, torch.float16)):
        images, saliency = cpp_mask_inputs(
            (2, 3, 9, 7, 4, 3), seed=3, dtype=image_dtype, sal_dtype=sal_dtype
        )
        assert_cpp_mask_matches(images, saliency, threshold=0.4)
        assert_cpp_mask_matches(images, saliency, top_fraction=0.3)


@pytest.mark.cpp
@needs_cpp
def test_cpp_mask_constant_saliency() -> None:
    # (empty batches: test_conformance.py::test_empty_batch)
    images = torch.randn(2, 3, 6, 6)
    constant = torch.full((2, 3, 3), 0.7)  # e = 0 everywhere: nothing above 0.5, k by index
    for rule in ({"threshold": 0.5}, {"threshold": 0.0}, {"top_fraction": 0.25}):
        got = functional.saliency_mask(images, constant, **rule, backend="cpp")
        expected = functional.saliency_mask(images, constant, **rule, backend="reference")
        assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=20, deadline=None)
@given(
    shape=shapes((1, 3), (1, 3), (1, 12), (1, 12), (1, 6), (1, 6)),
    threshold=st.floats(0.0, 1.0),
    top_fraction=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_min=True)),
    fp64=st.booleans(),
    seed=SEEDS,
)
def test_cpp_mask_property_matches_reference(
    shape: tuple, threshold: float, top_fraction: float, fp64: bool, seed: int
) -> None:
    # A 1×1 saliency map is flat after resizing: the reference's min-max of it is round-off noise
    # (F.interpolate's edge weights are one ulp off), which no exact kernel reproduces.
    assume(shape[-2] * shape[-1] > 1)
    images, saliency = cpp_mask_inputs(
        shape, seed=seed, dtype=torch.float64 if fp64 else torch.float32
    )
    # A flat resized map (a 1×1 saliency, or a one-pixel axis meeting a one-pixel output) has
    # e = rounding noise / (noise + 1e-8): no dtype, not even the reference's, decides it.
    resized = resize_maps(saliency.double(), tuple(images.shape[2:]))
    assume(bool((resized.amax(dim=(1, 2)) - resized.amin(dim=(1, 2)) > 1e-6).all()))
    assert_cpp_mask_matches(images, saliency, threshold=threshold, top_fraction=top_fraction)


@pytest.mark.cpp
@needs_cpp
def test_cpp_mask_is_the_automatic_choice_on_cpu() -> None:
    images, saliency = cpp_mask_inputs((2, 3, 5, 5, 3, 3))
    options = {"threshold": 0.5, "top_fraction": None, "fill": 0.0}
    assert_cpp_is_the_automatic_choice("saliency_mask", (images, saliency), options=options)


# --- triton backend ---

TRITON_OPTIONS = {
    "threshold": {"threshold": 0.4, "fill": -1.0},
    "zero-threshold": {"threshold": 0.0},
    "top-0.3": {"top_fraction": 0.3, "fill": 2.0},
    "top-1": {"top_fraction": 1.0},
}


def assert_triton_mask_equals_reference(
    images: torch.Tensor, saliency: torch.Tensor, **kwargs
) -> None:
    """Under the interpreter (same e, same comparisons, no fused multiply-adds) the keep mask
    and the masked images are bit-identical; on GPUs the masks may differ only within
    CPP_MASK_NEAR of the decision boundary (torch's CUDA resize rounds its own way), and the
    masked images must follow the kernel's own mask exactly."""
    masked, keep = functional.saliency_mask(images, saliency, backend="triton", **kwargs)
    ref_masked, ref_keep = mask(images, saliency, **kwargs)
    assert keep.dtype == torch.bool and masked.dtype == images.dtype
    if images.device.type == "cpu":
        assert torch.equal(keep, ref_keep), f"{(keep != ref_keep).sum()} pixels differ"
        assert torch.equal(masked, ref_masked)
        return
    e = cpp_mask_e(images, saliency).flatten(1)
    if kwargs.get("top_fraction") is None:
        boundary = torch.full_like(e[:, :1], float(kwargs.get("threshold", 0.5)))
    else:
        k = int(kwargs["top_fraction"] * e.shape[1] + 0.5)
        assert bool((keep.flatten(1).sum(1) == k).all())
        boundary = e.sort(dim=1, descending=True).values[:, max(k - 1, 0)][:, None]
    differs = keep.flatten(1) != ref_keep.flatten(1)
    assert not bool((differs & ((e - boundary).abs() >= CPP_MASK_NEAR)).any())
    fill = torch.full_like(images, kwargs.get("fill", 0.0))
    assert torch.equal(masked, torch.where(keep[:, None], images, fill))


@triton_dtypes_and_sizes(TRITON_OPTIONS)
def test_triton_mask_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, size: str, options: dict
) -> None:
    # beyond_tile: more pixels than one tile (16 under the interpreter, 1024 on GPUs). The
    # saliency stays fp32 for fp16/bf16 images (as the reference upcasts it anyway).
    big = (2, 2, 7, 5, 3, 4) if triton_device.type == "cpu" else (3, 3, 48, 40, 7, 7)
    shape = {"one": (1, 1, 1, 1, 1, 1), "odd": (2, 3, 3, 5, 2, 3), "beyond_tile": big}[size]
    sal_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    images, saliency = cpp_mask_inputs(shape, seed=sum(shape), dtype=dtype, sal_dtype=sal_dtype)
    assert_triton_mask_equals_reference(
        images.to(triton_device), saliency.to(triton_device), **options
    )


@pytest.mark.triton
@pytest.mark.parametrize("top_fraction", [0.01, 0.25, 0.5, 0.9])
def test_triton_mask_top_fraction_breaks_ties_by_flat_index(
    triton_device: torch.device, top_fraction: float
) -> None:
    # Quantised saliency on the images' own grid (no resize): many exactly tied values, so the
    # k-th value is tied and only the first ties in flat order (the stable sort) are kept;
    # a constant map ties everywhere (e = 0); f = 0.01 keeps k = 0 pixels.
    saliency = (rand(2, 6, 5, seed=4) * 2).round().float()
    images = rand(2, 2, 6, 5, seed=5).float()
    for sal in (saliency, torch.zeros_like(saliency)):
        assert_triton_mask_equals_reference(
            images.to(triton_device), sal.to(triton_device), top_fraction=top_fraction
        )


@pytest.mark.triton
def test_triton_mask_non_contiguous_inputs(triton_device: torch.device) -> None:
    images, saliency = cpp_mask_inputs((2, 3, 6, 5, 4, 3), seed=3)
    images = images.to(triton_device).transpose(2, 3).contiguous().transpose(2, 3)[:, ::2]
    saliency = saliency.to(triton_device).transpose(1, 2).contiguous().transpose(1, 2)
    assert not images.is_contiguous() and not saliency.is_contiguous()
    for options in TRITON_OPTIONS.values():
        assert_triton_mask_equals_reference(images, saliency, **options)


@pytest.mark.triton
def test_triton_mask_empty_batch_and_no_gradient(triton_device: torch.device) -> None:
    images = torch.zeros(0, 3, 4, 4, device=triton_device)
    masked, keep = functional.saliency_mask(
        images, torch.zeros(0, 2, 2, device=triton_device), top_fraction=0.5, backend="triton"
    )
    assert masked.shape == (0, 3, 4, 4) and keep.shape == (0, 4, 4) and keep.dtype == torch.bool
    images, saliency = cpp_mask_inputs((1, 2, 3, 3, 2, 2), seed=1)
    masked, keep = functional.saliency_mask(
        images.to(triton_device).requires_grad_(),
        saliency.to(triton_device).requires_grad_(),
        backend="triton",
    )
    assert not masked.requires_grad and not keep.requires_grad


@pytest.mark.triton
def test_triton_mask_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import saliency_mask as ops

    utils = opcheck_utils(triton_device, autograd=False)  # saliency_mask has no gradient
    images, saliency = cpp_mask_inputs((2, 3, 5, 4, 3, 2), seed=7)
    for top_fraction in (-1.0, 0.3):
        args = (images.to(triton_device), saliency.to(triton_device), 0.5, top_fraction, -1.0)
        opcheck(ops.saliency_mask_fwd, args, test_utils=utils)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_mask_torch_compile_fullgraph() -> None:
    images, saliency = (x.cuda() for x in cpp_mask_inputs((4, 3, 32, 32, 7, 7), seed=9))

    @torch.compile(fullgraph=True)
    def masked_sum(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked, keep = amc_kernels.saliency_mask(x, s, top_fraction=0.4, backend="triton")
        return masked.sum(), keep.sum()

    expected = mask(images, saliency, top_fraction=0.4)
    got = masked_sum(images, saliency)
    torch.testing.assert_close(got, (expected[0].sum(), expected[1].sum()))
