from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import amc_kernels
from amc_kernels import functional
from amc_kernels.testing import compare_backend, within_reference_error

# --- cpp backend ---

CPP_DTYPES = [
    pytest.param(dtype, id=str(dtype)[6:])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
]
CPP_SHAPES = {
    # (B, K, H, W): a single pixel channel, odd sizes, fewer maps than threads (K split into
    # chunks), and more channels than one chunk on several maps.
    "1x1x3x4": (1, 1, 3, 4),
    "odd": (3, 7, 5, 6),
    "one-map": (1, 48, 6, 5),
    "wide": (4, 33, 9, 8),
}
CPP_OPTIONS = {
    # (weighting, relu, normalize, output_size): every weighting, normalisation and resize kind
    "mean-plain": ("mean", True, None, None),
    "mean-max-up": ("mean", False, "max", (9, 7)),
    "elem-minmax-down": ("elementwise", True, "minmax", (4, 3)),
    "elem-sum-skewed": ("elementwise", False, "sum", (15, 2)),
    "mean-sum-same": ("mean", True, "sum", "same"),
}


def cpp_gradcam_available() -> bool:
    from amc_kernels import _extension

    return _extension.available()


needs_cpp_gradcam = pytest.mark.skipif(
    not cpp_gradcam_available(), reason="amc_kernels._C is not built"
)


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


def cpp_gradcam_run(backend: str, a: torch.Tensor, g: torch.Tensor, **kwargs: object) -> list:
    """[maps, dA, dG] for a fixed random projection of the maps."""
    leaves = [a.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()]
    out = functional.gradcam(*leaves, **kwargs, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad((out * weights).sum(), leaves)]


def assert_cpp_gradcam_close(a: torch.Tensor, g: torch.Tensor, tol: float, **kwargs) -> None:
    got = cpp_gradcam_run("cpp", a, g, **kwargs)
    expected = cpp_gradcam_run("reference", a, g, **kwargs)
    for name, x, y in zip(("maps", "dA", "dG"), got, expected, strict=True):
        scale = 1 + y.abs().max().item() if y.numel() else 1
        torch.testing.assert_close(
            x, y, rtol=0, atol=tol * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.cpp
@needs_cpp_gradcam
@pytest.mark.parametrize("dtype", CPP_DTYPES)
@pytest.mark.parametrize("shape", list(CPP_SHAPES.values()), ids=list(CPP_SHAPES))
@pytest.mark.parametrize("options", list(CPP_OPTIONS.values()), ids=list(CPP_OPTIONS))
def test_cpp_gradcam_matches_reference(dtype: torch.dtype, shape: tuple, options: tuple) -> None:
    args = cpp_gradcam_inputs(shape, seed=sum(shape), dtype=dtype)
    ok, error, bound = compare_backend("gradcam", "cpp", args, cpp_gradcam_kwargs(options, shape))
    assert ok, f"cpp error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.cpp
@needs_cpp_gradcam
@pytest.mark.parametrize("options", list(CPP_OPTIONS.values()), ids=list(CPP_OPTIONS))
def test_cpp_gradcam_fp64_is_exact_to_rounding(options: tuple) -> None:
    shape = (4, 37, 7, 9)
    a, g = cpp_gradcam_inputs(shape, seed=3)
    assert_cpp_gradcam_close(a, g, 1e-12, **cpp_gradcam_kwargs(options, shape))


@pytest.mark.cpp
@needs_cpp_gradcam
def test_cpp_gradcam_splits_channels_when_maps_are_fewer_than_threads() -> None:
    threads = torch.get_num_threads()
    a, g = cpp_gradcam_inputs((2, 70, 5, 4), seed=5)
    try:
        torch.set_num_threads(8)  # 2 maps, 8 threads: 4 chunks of K per map
        for weighting in ("mean", "elementwise"):
            assert_cpp_gradcam_close(a, g, 1e-12, weighting=weighting, normalize="max")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cpp
@needs_cpp_gradcam
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


@pytest.mark.cpp
@needs_cpp_gradcam
def test_cpp_gradcam_non_contiguous_inputs() -> None:
    a, g = cpp_gradcam_inputs((3, 6, 8, 5), seed=11)
    a_view = a.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    g_view = torch.cat([g, g], dim=1)[:, ::2]  # channel stride 2
    assert not a_view.is_contiguous() and not g_view.is_contiguous()
    for options in CPP_OPTIONS.values():
        kwargs = cpp_gradcam_kwargs(options, (3, 6, 8, 5))
        got = cpp_gradcam_run("cpp", a_view, g_view, **kwargs)
        expected = cpp_gradcam_run("reference", a, g_view.contiguous(), **kwargs)
        for x, y in zip(got, expected, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def cpp_gradcam_tied_map(kind: str) -> torch.Tensor:
    a = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    if kind == "negative":
        a = -a  # raw < 0 everywhere: the ReLU'd map is all zeros, every pixel ties
    elif kind == "block":
        a[0, :, 1:3, 1:3] = 3.0  # a 2×2 block of tied maxima, tied minima around it
    return a


@pytest.mark.cpp
@needs_cpp_gradcam
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
@needs_cpp_gradcam
@pytest.mark.parametrize("weighting", ["mean", "elementwise"])
def test_cpp_gradcam_empty_inputs(weighting: str) -> None:
    for shape, size in (((0, 3, 4, 5), (6, 7)), ((2, 0, 4, 5), None)):
        a, g = (torch.randn(shape, requires_grad=True) for _ in range(2))
        got = functional.gradcam(a, g, weighting=weighting, output_size=size, backend="cpp")
        expected = functional.gradcam(
            a, g, weighting=weighting, output_size=size, backend="reference"
        )
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected)
        grads = torch.autograd.grad(got.sum(), [a, g], allow_unused=True)
        assert all(gr is None or gr.shape == shape for gr in grads)


@pytest.mark.cpp
@needs_cpp_gradcam
@pytest.mark.parametrize(
    "weighting, relu, normalize, size",
    [
        ("mean", False, None, (5, 3)),
        ("elementwise", True, "max", (2, 4)),
        ("mean", False, "minmax", None),
        ("elementwise", True, "sum", (4, 4)),
    ],
)
def test_cpp_gradcam_gradcheck(weighting: str, relu: bool, normalize: str, size: tuple) -> None:
    a, g = cpp_gradcam_inputs((2, 2, 3, 3), seed=13)
    a.requires_grad_()
    g.requires_grad_()

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional.gradcam(
            x,
            y,
            weighting=weighting,
            relu=relu,
            normalize=normalize,
            output_size=size,
            backend="cpp",
        )

    assert torch.autograd.gradcheck(fn, (a, g))


@pytest.mark.cpp
@needs_cpp_gradcam
@pytest.mark.parametrize("weighting", ["mean", "elementwise"])
def test_cpp_gradcam_opcheck(weighting: str) -> None:
    a, g = cpp_gradcam_inputs((2, 5, 4, 3), seed=17, dtype=torch.float32)
    args = (a.clone().requires_grad_(), g.clone().requires_grad_())
    opcheck(torch.ops.amc_kernels.gradcam_fwd.default, (*args, weighting, True, "max", [6, 2]))
    maps, raw, alpha = torch.ops.amc_kernels.gradcam_fwd(a, g, weighting, True, "max", [6, 2])
    bwd_args = (torch.randn_like(maps), a, g, raw, alpha, weighting, True, "max", [6, 2])
    opcheck(torch.ops.amc_kernels.gradcam_bwd.default, bwd_args)


@pytest.mark.cpp
@needs_cpp_gradcam
def test_cpp_gradcam_compiles_fullgraph() -> None:
    a, g = cpp_gradcam_inputs((3, 4, 5, 6), seed=19, dtype=torch.float32)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional.gradcam(
            x, y, weighting="elementwise", normalize="sum", output_size=(8, 8), backend="cpp"
        )
        return out.square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves, ref_leaves = ([a.clone().requires_grad_(), g.clone().requires_grad_()] for _ in "ab")
    got, expected = compiled(*leaves), loss(*ref_leaves)
    torch.testing.assert_close(got, expected)
    for x, y in zip(
        torch.autograd.grad(got, leaves), torch.autograd.grad(expected, ref_leaves), strict=True
    ):
        torch.testing.assert_close(x, y)


@pytest.mark.cpp
@needs_cpp_gradcam
@settings(max_examples=15, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 6), st.integers(1, 6)),
    weighting=st.sampled_from(["mean", "elementwise"]),
    relu=st.booleans(),
    normalize=st.sampled_from([None, "max", "sum"]),
    size=st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9))),
    seed=st.integers(0, 2**16),
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
@needs_cpp_gradcam
def test_cpp_gradcam_double_backward_raises() -> None:
    a, g = (x.requires_grad_() for x in cpp_gradcam_inputs((2, 3, 4, 4), seed=23))
    out = functional.gradcam(a, g, normalize="max", backend="cpp")
    grad_a, _ = torch.autograd.grad(out.sum(), [a, g], create_graph=True)
    with pytest.raises(RuntimeError, match="gradcam: double backward is not supported"):
        torch.autograd.grad(grad_a.sum(), [a, g])


@pytest.mark.cpp
@needs_cpp_gradcam
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

    for got, expected in zip(parameter_grads("cpp"), parameter_grads("reference"), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.cpp
@needs_cpp_gradcam
def test_cpp_gradcam_is_the_automatic_choice_on_cpu() -> None:
    from amc_kernels import _dispatch

    a, g = cpp_gradcam_inputs((2, 3, 4, 4), dtype=torch.float32)
    options = {"weighting": "mean", "relu": True, "normalize": None, "output_size": None}
    call = _dispatch.Call("gradcam", a.device, a.dtype, (tuple(a.shape), tuple(g.shape)), options)
    assert _dispatch.select(call).backend == "cpp"
    torch.testing.assert_close(
        amc_kernels.gradcam(a, g), functional.gradcam(a, g, backend="cpp"), rtol=0, atol=0
    )
