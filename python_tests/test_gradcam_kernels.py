"""gradcam (docs/design.md#24-gradcam) on the cpp and triton backends: the resize against
F.interpolate, channel splits, tied extremes, training through the maps, opcheck, against the
reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import (
    SEEDS,
    assert_backend_matches,
    assert_backward_honours_output_masks,
    assert_compiled_triton_matches,
    assert_cpp_close_to_reference,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    num_threads,
    opcheck_utils,
    shapes,
    sum_of_squares,
)
from conftest import needs_cpp, triton_dtypes_and_sizes
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gradcam import NORMALIZATIONS, WEIGHTINGS, gradcam, positive
from torch.library import opcheck

from amc_kernels import functional
from amc_kernels.testing import GRADCAM_OPTIONS, within_reference_error

# --- cpp backend ---

# (weighting, relu, normalize, output_size): every weighting, normalisation and resize kind
CPP_OPTIONS = GRADCAM_OPTIONS


def cpp_gradcam_inputs(
    shape: tuple[int, int, int, int], seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64)
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return a.to(dtype), g.to(dtype)


def cpp_gradcam_kwargs(options: tuple, shape: tuple[int, int, int, int]) -> dict:
    weighting, relu, normalize, size = options
    size = shape[2:] if size == "same" else size
    return {"weighting": weighting, "relu": relu, "normalize": normalize, "output_size": size}


def assert_cpp_gradcam_close(a: torch.Tensor, g: torch.Tensor, tol: float, **kwargs) -> None:
    """[maps, dA, dG] of a fixed random projection of the maps, within tol of the reference."""
    assert_cpp_close_to_reference("gradcam", (a, g), tol=tol, names=("maps", "dA", "dG"), **kwargs)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("options", list(CPP_OPTIONS.values()), ids=list(CPP_OPTIONS))
def test_cpp_gradcam_fp64_is_exact_to_rounding(options: tuple) -> None:
    shape = (4, 37, 7, 9)
    a, g = cpp_gradcam_inputs(shape, seed=3)
    assert_cpp_gradcam_close(a, g, 1e-12, **cpp_gradcam_kwargs(options, shape))


@pytest.mark.cpp
@needs_cpp
def test_cpp_gradcam_splits_channels_when_maps_are_fewer_than_threads() -> None:
    a, g = cpp_gradcam_inputs((2, 70, 5, 4), seed=5)
    with num_threads(8):  # 2 maps, 8 threads: 4 chunks of K per map
        for weighting in WEIGHTINGS:
            assert_cpp_gradcam_close(a, g, 1e-12, weighting=weighting, normalize="max")


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "sizes",
    [(7, 7, 224, 224), (5, 4, 12, 10), (20, 13, 7, 9), (9, 3, 4, 11), (6, 6, 6, 6), (1, 1, 3, 2)],
    ids=["7to224", "up-skewed", "down", "mixed", "same", "from-1x1"],
)
def test_cpp_gradcam_resize_is_torch_bilinear(dtype: torch.dtype, sizes: tuple) -> None:
    # One channel with α = 1 and no ReLU: the map is the channel resized, and its gradient is
    # the transpose of the resize, both as F.interpolate (align_corners=False) computes them.
    # torch may fuse multiply-adds and sums in another order: the kernel's error against fp64
    # stays within twice torch's own error in the dtype, plus a few ulps (1e-13 in fp64).
    h, w, out_h, out_w = sizes
    x = torch.randn(3, 1, h, w, dtype=dtype, generator=torch.Generator().manual_seed(h * w))
    weights = torch.randn(3, out_h, out_w, dtype=dtype, generator=torch.Generator().manual_seed(1))

    def resized(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (grad,) = torch.autograd.grad((out * weights.to(out.dtype)).sum(), [leaf])
        return out.detach(), grad

    def interpolate(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]

    def kernel(x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x)
        return functional.gradcam(x, ones, relu=False, output_size=(out_h, out_w), backend="cpp")

    got, torch_same, exact = (
        resized(kernel, x),
        resized(interpolate, x),
        resized(interpolate, x.double()),
    )
    floor = 4 * torch.finfo(dtype).eps if dtype == torch.float32 else 1e-13
    for g, t, e in zip(got, torch_same, exact, strict=True):
        ok, error, bound = within_reference_error(g, t, e, floor)
        assert ok, f"error {error:.3g} above {bound:.3g}"


def cpp_gradcam_tied_map(kind: str) -> torch.Tensor:
    a = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    if kind == "negative":
        a = -a  # raw < 0 everywhere: the ReLU'd map is all zeros, every pixel ties
    elif kind == "block":
        a[0, :, 1:3, 1:3] = 3.0  # a 2×2 block of tied maxima, tied minima around it
    return a


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize(
    "normalize, relu, kind",
    [("max", relu, kind) for relu in (True, False) for kind in ("constant", "negative", "block")]
    + [("minmax", relu, "block") for relu in (True, False)]
    + [("minmax", True, "negative")],  # a constant signed map is ill-conditioned under minmax
)
def test_cpp_gradcam_ties_split_the_extreme_gradient_as_torch(
    normalize: str, relu: bool, kind: str
) -> None:
    # amax/amin backward shares the gradient evenly among tied extremes; so must the kernel.
    a = cpp_gradcam_tied_map(kind)
    assert_cpp_gradcam_close(a, torch.ones_like(a), 1e-12, relu=relu, normalize=normalize)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    shape=shapes((1, 4), (1, 20), (1, 6), (1, 6)),
    weighting=st.sampled_from(["mean", "elementwise"]),
    relu=st.booleans(),
    normalize=st.sampled_from([None, "max", "sum"]),
    size=st.one_of(st.none(), shapes((1, 9), (1, 9))),
    seed=SEEDS,
)
def test_cpp_gradcam_property_matches_reference(
    shape: tuple, weighting: str, relu: bool, normalize: str, size: tuple, seed: int
) -> None:
    if normalize == "sum" and not relu:
        normalize = "max"  # Σx of a signed map can vanish: x / (Σx + ε) is then ill-conditioned
    a, g = cpp_gradcam_inputs(shape, seed=seed)
    kwargs = {"weighting": weighting, "relu": relu, "normalize": normalize, "output_size": size}
    assert_cpp_gradcam_close(a, g, 1e-10, **kwargs)


@pytest.mark.cpp
@needs_cpp
def test_cpp_gradcam_trains_through_the_gradients_like_cgc() -> None:
    # CGC: G = ∂score/∂A with create_graph=True, a loss on the maps, and the parameters' gradient
    # flows through the maps into G's graph: the cpp first-order backward must match exactly.
    torch.manual_seed(29)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, dtype=torch.float64)
    head = torch.nn.Linear(6, 4, dtype=torch.float64)
    images = torch.randn(5, 3, 7, 7, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1])

    def parameter_grads(backend: str) -> list[torch.Tensor]:
        activations = torch.tanh(conv(images))
        scores = head(activations.mean(dim=(2, 3))).gather(1, labels[:, None]).sum()
        (gradients,) = torch.autograd.grad(scores, activations, create_graph=True)
        maps = functional.gradcam(
            activations,
            gradients,
            weighting="elementwise",
            normalize="sum",
            output_size=(14, 14),
            backend=backend,
        )
        loss = (maps * torch.linspace(-1, 1, maps.numel(), dtype=maps.dtype).view_as(maps)).sum()
        # the head bias does not reach G = ∂score/∂A; every other parameter does
        return list(torch.autograd.grad(loss, [*conv.parameters(), head.weight]))

    torch.testing.assert_close(
        parameter_grads("cpp"), parameter_grads("reference"), rtol=1e-10, atol=1e-12
    )


@pytest.mark.cpp
@needs_cpp
def test_cpp_gradcam_is_the_automatic_choice_on_cpu() -> None:
    a, g = cpp_gradcam_inputs((2, 3, 4, 4), dtype=torch.float32)
    options = {"weighting": "mean", "relu": True, "normalize": None, "output_size": None}
    assert_cpp_is_the_automatic_choice("gradcam", (a, g), options=options)


# --- triton backend ---

TRITON_OPTIONS = {
    "mean-relu-max-up": ("mean", True, "max", (9, 8)),
    "mean-none-same": ("mean", False, None, None),
    "elem-relu-minmax-down": ("elementwise", True, "minmax", (3, 4)),
    "elem-sum-skewed": ("elementwise", False, "sum", (11, 2)),
}


def triton_shape(size: str, device: torch.device) -> tuple[int, int, int, int]:
    """[B, K, H, W]: one pixel; odd sizes; more channels and pixels than one tile (16 × 4
    under the interpreter, 1024 pixels on GPUs)."""
    big = (2, 9, 5, 7) if device.type == "cpu" else (3, 70, 36, 33)
    return {"one": (1, 1, 1, 1), "odd": (3, 5, 3, 5), "beyond_tile": big}[size]


def assert_triton_gradcam_matches(a: torch.Tensor, g: torch.Tensor, **kwargs) -> None:
    assert_backend_matches("gradcam", "triton", (a, g), **kwargs)


@triton_dtypes_and_sizes(TRITON_OPTIONS)
def test_triton_gradcam_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, size: str, options: tuple
) -> None:
    shape = triton_shape(size, triton_device)
    a, g = (x.to(triton_device) for x in cpp_gradcam_inputs(shape, seed=sum(shape), dtype=dtype))
    if size == "one" and options[2] == "minmax":
        options = (*options[:2], "max", options[3])  # minmax of a resized 1×1 map is 0/ε-noise
    assert_triton_gradcam_matches(a, g, **cpp_gradcam_kwargs(options, shape))


@pytest.mark.triton
def test_triton_gradcam_non_contiguous_inputs(triton_device: torch.device) -> None:
    a, g = cpp_gradcam_inputs((2, 4, 5, 3), seed=11)
    a_view = a.transpose(2, 3).contiguous().transpose(2, 3).to(triton_device)
    g_view = torch.cat([g, g], dim=1)[:, ::2].to(triton_device)  # channel stride 2
    assert not a_view.is_contiguous() and not g_view.is_contiguous()
    for options in TRITON_OPTIONS.values():
        assert_triton_gradcam_matches(a_view, g_view, **cpp_gradcam_kwargs(options, a.shape))


@pytest.mark.triton
@pytest.mark.parametrize(
    ("normalize", "kind"),
    [(n, k) for n in ("max", "minmax", "sum") for k in ("constant", "negative", "block")
     if (n, k) != ("minmax", "constant")],  # a constant map under minmax is 0/ε-noise
)  # fmt: skip
def test_triton_gradcam_ties_and_flat_maps(
    triton_device: torch.device, normalize: str, kind: str
) -> None:
    # Tied extremes share the amax/amin gradient evenly (as torch); ReLU'd zeros carry none.
    a = cpp_gradcam_tied_map(kind).to(triton_device)
    g = torch.ones_like(a)
    for output_size in (None, (6, 5)):
        assert_triton_gradcam_matches(a, g, normalize=normalize, output_size=output_size)


@pytest.mark.triton
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_triton_gradcam_gradcheck(triton_device: torch.device, normalize: str | None) -> None:
    a = positive(1, 2, 3, 3, seed=1).to(triton_device).requires_grad_()
    g = positive(1, 2, 3, 3, seed=2).to(triton_device).requires_grad_()
    for weighting in WEIGHTINGS:

        def fn(x: torch.Tensor, y: torch.Tensor, weighting: str = weighting) -> torch.Tensor:
            return functional.gradcam(
                x, y, weighting=weighting, normalize=normalize, output_size=(4, 5),
                backend="triton",
            )  # fmt: skip

        assert torch.autograd.gradcheck(fn, (a, g), fast_mode=True)


@pytest.mark.triton
def test_triton_gradcam_empty_batch_and_zero_channels(triton_device: torch.device) -> None:
    empty = torch.zeros(0, 3, 4, 4, device=triton_device, requires_grad=True)
    out = functional.gradcam(empty, empty, normalize="minmax", output_size=(5, 6), backend="triton")
    assert out.shape == (0, 5, 6)
    (grad,) = torch.autograd.grad(out.sum(), empty)
    assert grad.shape == empty.shape
    no_channels = torch.zeros(2, 0, 3, 4, dtype=torch.float64, device=triton_device)
    for normalize in NORMALIZATIONS:
        got = functional.gradcam(no_channels, no_channels, normalize=normalize, backend="triton")
        expected = gradcam(no_channels.cpu(), no_channels.cpu(), normalize=normalize)
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)


@pytest.mark.triton
def test_triton_gradcam_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import gradcam as ops

    utils = opcheck_utils(triton_device)
    a, g = (x.to(triton_device) for x in cpp_gradcam_inputs((2, 3, 4, 5), seed=4))
    for weighting, relu, normalize, size in TRITON_OPTIONS.values():
        options = (weighting, relu, normalize or "none", list(size or ()))
        opcheck(ops.gradcam_fwd, (a.requires_grad_(), g, *options), test_utils=utils)
        maps, raw, alpha = ops.gradcam_fwd(a.detach(), g, *options)
        grad = torch.randn_like(maps)
        for mask in ([True, True], [True, False], [False, True]):
            bwd_args = (grad, a.detach(), g, raw, alpha, *options, mask)
            opcheck(ops.gradcam_bwd, bwd_args, test_utils=utils)


@pytest.mark.triton
def test_triton_gradcam_backward_honours_output_mask(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import gradcam as ops

    a, g = (x.to(triton_device) for x in cpp_gradcam_inputs((2, 3, 4, 5), seed=5))
    for weighting, relu, normalize, size in TRITON_OPTIONS.values():
        options = (weighting, relu, normalize or "none", list(size or ()))
        maps, raw, alpha = ops.gradcam_fwd(a, g, *options)
        grad = torch.randn_like(maps)
        assert_backward_honours_output_masks(ops.gradcam_bwd, grad, a, g, raw, alpha, *options)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_gradcam_torch_compile_fullgraph() -> None:
    leaves = [x.float().cuda().requires_grad_() for x in cpp_gradcam_inputs((4, 64, 7, 7), seed=6)]
    tolerances = {"value_tol": (1e-4, 1e-4), "grad_tol": (1e-3, 1e-3)}
    options = {"normalize": "minmax", "output_size": (32, 32)}
    assert_compiled_triton_matches("gradcam", leaves, total=sum_of_squares, **options, **tolerances)


@pytest.mark.triton
def test_triton_gradcam_double_backward_raises(triton_device: torch.device) -> None:
    a = positive(1, 2, 3, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.gradcam(a, a.detach(), normalize="max", backend="triton")
    assert_double_backward_raises(out.sum(), a, "gradcam_triton_bwd")
