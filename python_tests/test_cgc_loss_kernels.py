"""cgc_loss (docs/design.md#26-cgc_loss) on the cpp and triton backends: many tasks, special
maps, sizes far beyond a map, crop shapes, opcheck, against the reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _cgc_loss_cases import (
    assert_cgc_exact,
    bools,
    boxes,
    cgc_maps,
    cgc_random_crops,
    close,
    maps,
)
from _helpers import (
    assert_backend_matches,
    assert_compiled_triton_matches,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    assert_output_mask_honoured,
    num_threads,
    opcheck_utils,
)
from conftest import DTYPE_IDS, EXACT_DTYPES, TRITON_DTYPES, needs_cpp

from amc_kernels import functional
from amc_kernels.testing import cgc_edge_crops

# --- cpp backend ---


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_cgc_fp64_exact_over_many_tasks(threads: int) -> None:
    with num_threads(threads):
        cam_orig, cam_aug = cgc_maps(70, 5, 4, seed=threads)
        crops, flips = cgc_random_crops(70, 20, seed=threads)
        assert_cgc_exact("cpp", cam_orig, cam_aug, crops, flips, temperature=0.2, size=20)


def cgc_special_maps(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    maps = cgc_maps(4, 5, 6, seed=5)
    if kind == "constant":  # every û and v̂ equal: all cosines 1 (θ → 0), the gradient is 0
        return torch.full((4, 5, 6), 0.7, dtype=torch.float64), torch.ones(4, 5, 6).double()
    if kind == "identical":  # u_b = v_b for the identity crop; duplicate augmented maps
        return maps[0], torch.cat([maps[0][:2], maps[0][:2]])
    if kind == "zero":  # one zero map in each input: σ = ε and s = ε everywhere there
        keep = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(4, 1, 1)
        return maps[0] * keep, maps[1] * keep.roll(1, 0)
    one_hot = torch.zeros(4, 5, 6, dtype=torch.float64)  # "peaked": one hot pixel per map
    one_hot.view(4, -1)[torch.arange(4), torch.tensor([0, 7, 29, 14])] = 3.0
    return one_hot, one_hot.flip(0)


#: The crops and flips of the special maps: identity (twice), inside, and a one-row strip.
SPECIAL_CROPS = boxes([[0, 0, 12, 12], [0, 0, 12, 12], [2, 3, 5, 9], [11, 0, 1, 12]])
SPECIAL_FLIPS = bools([False, False, True, True])


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("kind", ["constant", "identical", "zero", "peaked"])
@pytest.mark.parametrize("dtype", DTYPE_IDS)
def test_cpp_cgc_special_maps(kind: str, dtype: torch.dtype) -> None:
    cam_orig, cam_aug = cgc_special_maps(kind)
    crops, flips = SPECIAL_CROPS, SPECIAL_FLIPS
    if dtype == torch.float64:
        assert_cgc_exact("cpp", cam_orig, cam_aug, crops, flips, size=12)
    else:
        args = (cam_orig.to(dtype), cam_aug.to(dtype), crops, flips)
        assert_backend_matches("cgc_loss", "cpp", args, size=12)


@pytest.mark.cpp
@needs_cpp
def test_cpp_cgc_constant_maps_give_log_batch_at_any_size() -> None:
    # size = 10⁵: one size×size map would take 80 GB; the kernel's cost is linear in size.
    cams = torch.ones(3, 4, 4, dtype=torch.float64, requires_grad=True)
    crops = torch.tensor([[0, 0, 100_000, 100_000], [17, 3, 5, 99_000], [99_999, 0, 1, 1]])
    flips = torch.tensor([False, True, True])
    loss = functional.cgc_loss(cams, 2 * cams, crops, flips, size=100_000, backend="cpp")
    assert loss.item() == pytest.approx(math.log(3), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, cams)
    assert grad.abs().max().item() < 1e-9


@pytest.mark.cpp
@needs_cpp
def test_cpp_cgc_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    # (shapes ((4, 7, 7), (4, 7, 7), (4, 4), (4,)): those of the inputs)
    cam_orig, cam_aug = cgc_maps(4, 7, 7, seed=9)
    crops, flips = cgc_random_crops(4, 32, seed=9)
    args = (cam_orig, cam_aug, crops, flips)
    assert_cpp_is_the_automatic_choice("cgc_loss", args, size=32)


# --- triton backend ---

# (B, h, w, size): one sample; 1×1 maps; a 1×1 frame (size 1 reaches a GPU kernel as a constexpr);
# odd shapes; a batch beyond one 16-row block of the B×B kernels and maps beyond one 16×16 tile
# (the GPU blocks are 64 rows).
CGC_TRITON_SHAPES = [(1, 7, 7, 16), (3, 1, 1, 16), (2, 3, 2, 1), (5, 3, 5, 37), (19, 17, 6, 24)]


def cgc_triton_inputs(batch, h, w, size, seed, device, dtype=torch.float64):
    cam_orig, cam_aug = cgc_maps(batch, h, w, seed=seed, dtype=dtype)
    crops, flips = cgc_random_crops(batch, size, seed=seed)
    return cam_orig.to(device), cam_aug.to(device), crops.to(device), flips.to(device)


def assert_triton_cgc_matches(*args: object, **kwargs: object) -> None:
    assert_backend_matches("cgc_loss", "triton", args, **kwargs)


def assert_triton_cgc_exact(*args: object, **kwargs: object) -> None:
    assert_cgc_exact("triton", *args, **kwargs)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize(("batch", "h", "w", "size"), CGC_TRITON_SHAPES)
def test_triton_cgc_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, batch: int, h: int, w: int, size: int
) -> None:
    inputs = cgc_triton_inputs(batch, h, w, size, batch + size, triton_device, dtype)
    assert_triton_cgc_matches(*inputs, temperature=0.3, size=size)


@pytest.mark.triton
@pytest.mark.parametrize(("batch", "h", "w", "size"), CGC_TRITON_SHAPES)
def test_triton_cgc_fp64_exact(
    triton_device: torch.device, batch: int, h: int, w: int, size: int
) -> None:
    inputs = cgc_triton_inputs(batch, h, w, size, 3 * batch + size, triton_device)
    assert_triton_cgc_exact(*inputs, temperature=0.07, size=size)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_triton_cgc_edge_crops(triton_device: torch.device, dtype: torch.dtype) -> None:
    # Identity, 1×1 corner, border-strip and non-square crops, every other one flipped.
    crops, flips = cgc_edge_crops(13)
    cam_orig, cam_aug = cgc_maps(len(crops), 5, 4, seed=31, dtype=dtype)
    args = (cam_orig, cam_aug, crops, flips)
    args = tuple(a.to(triton_device) for a in args)
    assert_triton_cgc_matches(*args, temperature=0.5, size=13)
    if dtype == torch.float64:
        assert_triton_cgc_exact(*args, temperature=0.5, size=13)


@pytest.mark.triton
def test_triton_cgc_non_contiguous_inputs(triton_device: torch.device) -> None:
    cam_orig, cam_aug = cgc_maps(6, 5, 8, seed=41)
    orig = cam_orig.transpose(1, 2).to(triton_device)  # [6, 8, 5], transposed strides
    aug = cam_aug.to(triton_device)[:, ::1, ::1].transpose(1, 2)
    crops, flips = cgc_random_crops(12, 16, seed=41)
    crops = crops.to(triton_device)[::2]  # strided rows
    flips = flips.to(triton_device)[::2]
    assert not orig.is_contiguous() and not crops.is_contiguous()
    assert_triton_cgc_exact(orig, aug, crops, flips, size=16)


@pytest.mark.triton
def test_triton_cgc_constant_maps_give_log_batch(triton_device: torch.device) -> None:
    cams = torch.ones(3, 4, 4, dtype=torch.float64, device=triton_device)
    crops = boxes([[0, 0, 16, 16], [2, 3, 8, 5], [0, 8, 16, 8]]).to(triton_device)
    flips = bools([False, True, False]).to(triton_device)
    got = functional.cgc_loss(cams, 2 * cams, crops, flips, size=16, backend="triton")
    close(got.cpu(), math.log(3))


@pytest.mark.triton
def test_triton_cgc_empty_batch(triton_device: torch.device) -> None:
    orig = torch.zeros(0, 3, 3, dtype=torch.float64, device=triton_device).requires_grad_()
    aug = torch.zeros(0, 3, 3, dtype=torch.float64, device=triton_device).requires_grad_()
    crops = torch.zeros(0, 4, dtype=torch.long, device=triton_device)
    flips = torch.zeros(0, dtype=torch.bool, device=triton_device)
    loss = functional.cgc_loss(orig, aug, crops, flips, size=8, backend="triton")
    assert loss.item() == 0.0 and loss.dtype == torch.float64
    grads = torch.autograd.grad(loss, (orig, aug))
    assert all(g.shape == (0, 3, 3) for g in grads)


@pytest.mark.triton
def test_triton_cgc_gradcheck(triton_device: torch.device) -> None:
    orig = maps(3, 3, 2, seed=20).to(triton_device).requires_grad_()
    aug = maps(3, 3, 2, seed=21).to(triton_device).requires_grad_()
    crops = boxes([[0, 0, 10, 10], [2, 1, 6, 8], [4, 4, 3, 2]]).to(triton_device)
    flips = bools([False, True, True]).to(triton_device)

    def fn(orig: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        return functional.cgc_loss(orig, aug, crops, flips, size=10, backend="triton")

    assert torch.autograd.gradcheck(fn, (orig, aug), fast_mode=True)


@pytest.mark.triton
@pytest.mark.parametrize("learnable", [False, True])
def test_triton_cgc_opcheck(triton_device: torch.device, learnable: bool) -> None:
    # τ as (None, number) or (0-d tensor, ignored number): every output_mask is honoured.
    from amc_kernels.triton_kernels import cgc_loss as ops

    utils = opcheck_utils(triton_device)
    orig, aug, crops, flips = cgc_triton_inputs(4, 3, 5, 12, 5, triton_device)
    tau = torch.tensor(0.5, dtype=torch.float64, device=triton_device) if learnable else None
    temperature = (tau, 0.0) if learnable else (None, 0.5)
    args = (orig.requires_grad_(), aug.requires_grad_(), crops, flips, *temperature, 12)
    torch.library.opcheck(ops.cgc_loss_fwd, args, test_utils=utils)
    grad = torch.ones((), dtype=torch.float64, device=triton_device)
    bwd_args = (grad, orig.detach(), aug.detach(), crops, flips, *temperature, 12)
    full = ops.cgc_loss_bwd(*bwd_args, [True, True, True])
    for mask in itertools.product([True, False], repeat=3):
        torch.library.opcheck(ops.cgc_loss_bwd, (*bwd_args, list(mask)), test_utils=utils)
        assert_output_mask_honoured(mask, ops.cgc_loss_bwd(*bwd_args, list(mask)), full)


@pytest.mark.triton
@pytest.mark.cuda
def test_triton_cgc_torch_compile_fullgraph() -> None:
    orig, aug, crops, flips = cgc_triton_inputs(12, 7, 7, 32, 6, torch.device("cuda"))
    leaves = [orig.float().requires_grad_(), aug.float().requires_grad_()]
    assert_compiled_triton_matches(
        "cgc_loss", leaves, crops, flips, size=32, value_tol=(1e-5, 1e-5), grad_tol=(1e-4, 1e-5)
    )


@pytest.mark.triton
def test_triton_cgc_double_backward_raises(triton_device: torch.device) -> None:
    orig, aug, crops, flips = cgc_triton_inputs(3, 3, 3, 7, 8, triton_device)
    orig = orig.requires_grad_()
    loss = functional.cgc_loss(orig, aug, crops, flips, size=7, backend="triton")
    assert_double_backward_raises(loss, orig, "cgc_loss_triton_bwd")


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["constant", "identical", "zero", "peaked"])
def test_triton_cgc_special_maps(triton_device: torch.device, kind: str) -> None:
    cam_orig, cam_aug = (m.to(triton_device) for m in cgc_special_maps(kind))
    crops, flips = SPECIAL_CROPS.to(triton_device), SPECIAL_FLIPS.to(triton_device)
    assert_triton_cgc_exact(cam_orig, cam_aug, crops, flips, size=12)
    assert_triton_cgc_matches(cam_orig.float(), cam_aug.float(), crops, flips, size=12)
