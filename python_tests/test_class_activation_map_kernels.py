"""class_activation_map (docs/design.md#25-class_activation_map) on the cpp and triton backends:
channel splits, repeated targets, target dtypes and range, opcheck, against the reference."""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    SEEDS,
    assert_backend_matches,
    assert_compiled_triton_matches,
    assert_cpp_close_to_reference,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    assert_output_mask_honoured,
    num_threads,
    opcheck_utils,
    shapes,
    sum_of_squares,
    value_and_grads,
)
from conftest import needs_cpp, rand, triton_dtypes_and_sizes
from conftest import rand_labels as rand_targets
from hypothesis import given, settings
from torch.library import opcheck

from amc_kernels import functional

# --- cpp backend ---

CPP_CAM_SHAPES = {
    # (B, K, H, W, C): one pixel and one channel, odd sizes, fewer maps than threads (K split
    # into chunks), and more channels than one chunk on several maps.
    "1x1x1x1": (1, 1, 1, 1, 1),
    "odd": (3, 7, 5, 6, 4),
    "one-map": (1, 48, 6, 5, 3),
    "wide": (6, 67, 7, 7, 10),
}


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
    return value_and_grads("class_activation_map", backend, (a, w), targets)


def assert_cpp_cam_close(a: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> None:
    names = ("cam", "dA", "dW")
    assert_cpp_close_to_reference("class_activation_map", (a, w), targets, tol=1e-12, names=names)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("shape", list(CPP_CAM_SHAPES.values()), ids=list(CPP_CAM_SHAPES))
def test_cpp_cam_fp64_is_exact_to_rounding(shape: tuple) -> None:
    assert_cpp_cam_close(*cpp_cam_inputs(shape, seed=3))


@pytest.mark.cpp
@needs_cpp
def test_cpp_cam_repeated_targets_accumulate_and_unused_classes_get_zero() -> None:
    a, w, _ = cpp_cam_inputs((7, 20, 4, 3, 5), seed=5)
    targets = torch.tensor([2, 2, 0, 2, 0, 4, 2])  # class 2 four times; classes 1 and 3 unused
    assert_cpp_cam_close(a, w, targets)
    _, _, grad_w = cpp_cam_run("cpp", a, w, targets)
    assert bool((grad_w[[1, 3]] == 0).all())


@pytest.mark.cpp
@needs_cpp
def test_cpp_cam_splits_channels_when_maps_are_fewer_than_threads() -> None:
    a, w, targets = cpp_cam_inputs((2, 70, 5, 4, 3), seed=9)
    with num_threads(8):  # 2 maps, 8 threads: 4 chunks of K per map
        assert_cpp_cam_close(a, w, targets)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8])
def test_cpp_cam_non_contiguous_inputs_and_target_dtypes(target_dtype: torch.dtype) -> None:
    a, w, targets = cpp_cam_inputs((4, 6, 5, 7, 3), seed=11)
    a_view = a.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    w_view = w.t().contiguous().t()
    target_view = torch.stack([targets, targets], dim=1)[:, 0].to(target_dtype)
    assert not (a_view.is_contiguous() or w_view.is_contiguous())
    got = cpp_cam_run("cpp", a_view, w_view, target_view)
    expected = cpp_cam_run("reference", a, w, targets)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.cpp
@needs_cpp
def test_cpp_cam_kernel_checks_target_range() -> None:
    a, w, _ = cpp_cam_inputs((2, 3, 4, 4, 3))
    with pytest.raises(RuntimeError, match=r"class_activation_map: targets\[1\] = 3 is outside"):
        torch.ops.amc_kernels.class_activation_map_fwd(a, w, torch.tensor([0, 3]))


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    shape=shapes((1, 5), (1, 40), (1, 6), (1, 6), (1, 4)),
    seed=SEEDS,
)
def test_cpp_cam_property_matches_reference(shape: tuple, seed: int) -> None:
    assert_cpp_cam_close(*cpp_cam_inputs(shape, seed=seed))


@pytest.mark.cpp
@needs_cpp
def test_cpp_cam_is_the_automatic_choice_on_cpu() -> None:
    a, w, targets = cpp_cam_inputs((2, 3, 4, 4, 2), dtype=torch.float32)
    assert_cpp_is_the_automatic_choice("class_activation_map", (a, w, targets))


# --- triton backend ---


def triton_cam_inputs(
    shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activations [B, K, H, W], fc_weight [C, K], targets [B]) from (B, K, H, W, C)."""
    batch, k, h, w, classes = shape
    a = rand(batch, k, h, w, seed=seed, dtype=dtype).to(device)
    weight = rand(classes, k, seed=seed + 1, dtype=dtype).to(device)
    return a, weight, rand_targets(batch, classes, seed=seed).to(device)


def assert_triton_cam_matches(a: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> None:
    assert_backend_matches("class_activation_map", "triton", (a, w, t))


@triton_dtypes_and_sizes()
def test_triton_cam_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, size: str
) -> None:
    # beyond_tile: more channels and pixels than one tile (4 × 16 under the interpreter, up to
    # 4096 elements on GPUs), and fewer classes than maps, so dW rows accumulate several maps.
    big = (5, 9, 5, 7, 3) if triton_device.type == "cpu" else (6, 300, 40, 40, 4)
    shape = {"one": (1, 1, 1, 1, 1), "odd": (3, 5, 3, 5, 7), "beyond_tile": big}[size]
    assert_triton_cam_matches(*triton_cam_inputs(shape, triton_device, dtype, seed=sum(shape)))


@pytest.mark.triton
def test_triton_cam_non_contiguous_inputs_and_target_dtypes(triton_device: torch.device) -> None:
    a, w, t = triton_cam_inputs((4, 3, 5, 6, 3), triton_device, torch.float64, seed=3)
    a_view = a.transpose(2, 3).contiguous().transpose(2, 3)
    w_view = w.T.contiguous().T  # column-major [C, K]
    assert not a_view.is_contiguous() and not w_view.is_contiguous()
    for targets in (t, t.to(torch.int32), t.to(torch.uint8)):
        assert_triton_cam_matches(a_view, w_view, targets)
    assert_triton_cam_matches(a[:, ::2], w[:, ::2], t)  # channel stride 2


@pytest.mark.triton
def test_triton_cam_all_maps_on_one_class(triton_device: torch.device) -> None:
    # Every map adds into the same row of dW (atomics); the other rows stay exactly zero.
    a, w, _ = triton_cam_inputs((6, 4, 3, 3, 5), triton_device, torch.float64, seed=5)
    targets = torch.full((6,), 2, dtype=torch.long, device=triton_device)
    assert_triton_cam_matches(a, w, targets)
    leaf = w.clone().requires_grad_()
    out = functional.class_activation_map(a, leaf, targets, backend="triton")
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    assert torch.equal(grad[[0, 1, 3, 4]], torch.zeros_like(grad[[0, 1, 3, 4]]))


@pytest.mark.triton
def test_triton_cam_gradcheck(triton_device: torch.device) -> None:
    a, w, t = triton_cam_inputs((3, 4, 2, 3, 2), triton_device, torch.float64, seed=8)
    leaves = (a.requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, y: functional.class_activation_map(x, y, t, backend="triton"),
        leaves,
        fast_mode=True,
    )


@pytest.mark.triton
def test_triton_cam_empty_batch_and_zero_channels(triton_device: torch.device) -> None:
    for shape in ((0, 3, 4, 4, 2), (2, 0, 3, 4, 2)):
        a, w, t = triton_cam_inputs(shape, triton_device, torch.float64)
        leaves = (a.requires_grad_(), w.requires_grad_())
        out = functional.class_activation_map(*leaves, t, backend="triton")
        assert out.shape == (shape[0], *shape[2:4])
        assert torch.equal(out, torch.zeros_like(out))
        grads = torch.autograd.grad(out.sum(), leaves)
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.triton
def test_triton_cam_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import class_activation_map as ops

    utils = opcheck_utils(triton_device)
    a, w, t = triton_cam_inputs((3, 4, 2, 3, 2), triton_device, torch.float64, seed=9)
    opcheck(ops.class_activation_map_fwd, (a.requires_grad_(), w, t), test_utils=utils)
    grad = torch.randn(3, 2, 3, dtype=torch.float64, device=triton_device)
    full = ops.class_activation_map_bwd(grad, a.detach(), w, t, [True, True])
    for mask in ([True, True], [True, False], [False, True]):
        opcheck(ops.class_activation_map_bwd, (grad, a.detach(), w, t, mask), test_utils=utils)
        got = ops.class_activation_map_bwd(grad, a.detach(), w, t, mask)
        assert_output_mask_honoured(mask, got, full)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_cam_torch_compile_fullgraph() -> None:
    a, w, t = triton_cam_inputs((8, 64, 7, 7, 10), torch.device("cuda"), torch.float32, seed=2)
    leaves = (a.requires_grad_(), w.requires_grad_())
    tolerances = {"value_tol": (1e-4, 1e-4), "grad_tol": (1e-3, 1e-3)}
    assert_compiled_triton_matches(
        "class_activation_map", leaves, t, total=sum_of_squares, **tolerances
    )


@pytest.mark.triton
def test_triton_cam_double_backward_raises(triton_device: torch.device) -> None:
    a, w, t = triton_cam_inputs((2, 3, 2, 2, 2), triton_device, torch.float64)
    a.requires_grad_()
    out = functional.class_activation_map(a, w, t, backend="triton")
    assert_double_backward_raises((out * out).sum(), a, "class_activation_map_triton_bwd")
