from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import amc_kernels
from amc_kernels import functional
from amc_kernels.testing import compare_backend

# --- cpp backend ---

CPP_CAM_DTYPES = [
    pytest.param(dtype, id=str(dtype)[6:])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
]
CPP_CAM_SHAPES = {
    # (B, K, H, W, C): one pixel and one channel, odd sizes, fewer maps than threads (K split
    # into chunks), and more channels than one chunk on several maps.
    "1x1x1x1": (1, 1, 1, 1, 1),
    "odd": (3, 7, 5, 6, 4),
    "one-map": (1, 48, 6, 5, 3),
    "wide": (6, 67, 7, 7, 10),
}


def cpp_cam_available() -> bool:
    from amc_kernels import _extension

    return _extension.available()


needs_cpp_cam = pytest.mark.skipif(not cpp_cam_available(), reason="amc_kernels._C is not built")


def cpp_cam_inputs(
    shape: tuple[int, int, int, int, int], seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, height, width, classes = shape
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    w = torch.randn(classes, channels, generator=gen, dtype=torch.float64)
    targets = torch.randint(classes, (batch,), generator=gen)
    return a.to(dtype), w.to(dtype), targets


def cpp_cam_run(backend: str, a: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> list:
    """[CAM, dA, dW] for a fixed random projection of the maps."""
    leaves = [a.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
    out = functional.class_activation_map(*leaves, targets, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad((out * weights).sum(), leaves)]


def assert_cpp_cam_close(a: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> None:
    got, expected = cpp_cam_run("cpp", a, w, targets), cpp_cam_run("reference", a, w, targets)
    for name, x, y in zip(("cam", "dA", "dW"), got, expected, strict=True):
        scale = 1 + y.abs().max().item() if y.numel() else 1
        torch.testing.assert_close(
            x, y, rtol=0, atol=1e-12 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.cpp
@needs_cpp_cam
@pytest.mark.parametrize("dtype", CPP_CAM_DTYPES)
@pytest.mark.parametrize("shape", list(CPP_CAM_SHAPES.values()), ids=list(CPP_CAM_SHAPES))
def test_cpp_cam_matches_reference(dtype: torch.dtype, shape: tuple) -> None:
    args = cpp_cam_inputs(shape, seed=sum(shape), dtype=dtype)
    ok, error, bound = compare_backend("class_activation_map", "cpp", args, {})
    assert ok, f"cpp error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.cpp
@needs_cpp_cam
@pytest.mark.parametrize("shape", list(CPP_CAM_SHAPES.values()), ids=list(CPP_CAM_SHAPES))
def test_cpp_cam_fp64_is_exact_to_rounding(shape: tuple) -> None:
    assert_cpp_cam_close(*cpp_cam_inputs(shape, seed=3))


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_repeated_targets_accumulate_and_unused_classes_get_zero() -> None:
    a, w, _ = cpp_cam_inputs((7, 20, 4, 3, 5), seed=5)
    targets = torch.tensor([2, 2, 0, 2, 0, 4, 2])  # class 2 four times; classes 1 and 3 unused
    assert_cpp_cam_close(a, w, targets)
    _, _, grad_w = cpp_cam_run("cpp", a, w, targets)
    assert bool((grad_w[[1, 3]] == 0).all())


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_splits_channels_when_maps_are_fewer_than_threads() -> None:
    threads = torch.get_num_threads()
    a, w, targets = cpp_cam_inputs((2, 70, 5, 4, 3), seed=9)
    try:
        torch.set_num_threads(8)  # 2 maps, 8 threads: 4 chunks of K per map
        assert_cpp_cam_close(a, w, targets)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cpp
@needs_cpp_cam
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8])
def test_cpp_cam_non_contiguous_inputs_and_target_dtypes(target_dtype: torch.dtype) -> None:
    a, w, targets = cpp_cam_inputs((4, 6, 5, 7, 3), seed=11)
    a_view = a.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    w_view = w.t().contiguous().t()
    target_view = torch.stack([targets, targets], dim=1)[:, 0].to(target_dtype)
    assert not (a_view.is_contiguous() or w_view.is_contiguous())
    got = cpp_cam_run("cpp", a_view, w_view, target_view)
    expected = cpp_cam_run("reference", a, w, targets)
    for x, y in zip(got, expected, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_empty_inputs() -> None:
    for shape in ((0, 3, 4, 5, 2), (2, 0, 4, 5, 2)):
        a, w, targets = cpp_cam_inputs(shape)
        a.requires_grad_()
        w.requires_grad_()
        got = functional.class_activation_map(a, w, targets, backend="cpp")
        expected = functional.class_activation_map(a, w, targets, backend="reference")
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected)
        grad_a, grad_w = torch.autograd.grad(got.sum(), [a, w])
        assert grad_a.shape == a.shape and bool((grad_w == 0).all())


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_kernel_checks_target_range() -> None:
    a, w, _ = cpp_cam_inputs((2, 3, 4, 4, 3))
    with pytest.raises(RuntimeError, match=r"class_activation_map: targets\[1\] = 3 is outside"):
        torch.ops.amc_kernels.class_activation_map_fwd(a, w, torch.tensor([0, 3]))


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_gradcheck() -> None:
    a, w, _ = cpp_cam_inputs((3, 3, 2, 2, 2), seed=13)
    targets = torch.tensor([1, 1, 0])  # a repeated target: dW rows accumulate

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional.class_activation_map(x, y, targets, backend="cpp")

    assert torch.autograd.gradcheck(fn, (a.requires_grad_(), w.requires_grad_()))


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_opcheck() -> None:
    a, w, targets = cpp_cam_inputs((3, 5, 4, 3, 4), seed=17, dtype=torch.float32)
    args = (a.clone().requires_grad_(), w.clone().requires_grad_(), targets)
    opcheck(torch.ops.amc_kernels.class_activation_map_fwd.default, args)
    grad = torch.randn(3, 4, 3)
    opcheck(torch.ops.amc_kernels.class_activation_map_bwd.default, (grad, a, w, targets))


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_compiles_fullgraph() -> None:
    a, w, targets = cpp_cam_inputs((3, 4, 5, 6, 3), seed=19, dtype=torch.float32)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional.class_activation_map(x, y, targets, backend="cpp").square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves, ref_leaves = ([a.clone().requires_grad_(), w.clone().requires_grad_()] for _ in "ab")
    got, expected = compiled(*leaves), loss(*ref_leaves)
    torch.testing.assert_close(got, expected)
    for x, y in zip(
        torch.autograd.grad(got, leaves), torch.autograd.grad(expected, ref_leaves), strict=True
    ):
        torch.testing.assert_close(x, y)


@pytest.mark.cpp
@needs_cpp_cam
@settings(max_examples=15, deadline=None)
@given(
    shape=st.tuples(
        st.integers(1, 5),
        st.integers(1, 40),
        st.integers(1, 6),
        st.integers(1, 6),
        st.integers(1, 4),
    ),
    seed=st.integers(0, 2**16),
)
def test_cpp_cam_property_matches_reference(shape: tuple, seed: int) -> None:
    assert_cpp_cam_close(*cpp_cam_inputs(shape, seed=seed))


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_double_backward_raises() -> None:
    a, w, targets = cpp_cam_inputs((2, 3, 4, 4, 2), seed=23)
    a.requires_grad_()
    w.requires_grad_()
    out = functional.class_activation_map(a, w, targets, backend="cpp")
    grad_a, _ = torch.autograd.grad(out.square().sum(), [a, w], create_graph=True)
    with pytest.raises(RuntimeError, match="class_activation_map: double backward is not"):
        torch.autograd.grad(grad_a.sum(), [a, w])


@pytest.mark.cpp
@needs_cpp_cam
def test_cpp_cam_is_the_automatic_choice_on_cpu() -> None:
    from amc_kernels import _dispatch

    a, w, targets = cpp_cam_inputs((2, 3, 4, 4, 2), dtype=torch.float32)
    shapes = (tuple(a.shape), tuple(w.shape), tuple(targets.shape))
    call = _dispatch.Call("class_activation_map", a.device, a.dtype, shapes, {})
    assert _dispatch.select(call).backend == "cpp"
    torch.testing.assert_close(
        amc_kernels.class_activation_map(a, w, targets),
        functional.class_activation_map(a, w, targets, backend="cpp"),
        rtol=0,
        atol=0,
    )
