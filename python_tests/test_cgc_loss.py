"""cgc_loss (DESIGN §2.6): the cpp backend against the reference."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import amc_kernels
from amc_kernels import functional

# --- cpp backend ---


def cpp_cgc_available() -> bool:
    from amc_kernels import _extension

    return _extension.available()


needs_cpp_cgc = pytest.mark.skipif(not cpp_cgc_available(), reason="amc_kernels._C is not built")
CPP_CGC_DTYPES = [
    pytest.param(dtype, id=str(dtype).split(".")[-1])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
]


def cgc_maps(
    batch: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded non-negative [B, h, w] maps, like ReLU'd CAMs."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(2, batch, h, w, generator=gen, dtype=torch.float64).abs()
    return maps[0].to(dtype), maps[1].to(dtype)


def cgc_random_crops(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every shape from 1×1 to the whole frame, anywhere inside it, and random flips."""
    gen = torch.Generator().manual_seed(seed + 7919)
    height = torch.randint(1, size + 1, (batch,), generator=gen)
    width = torch.randint(1, size + 1, (batch,), generator=gen)
    top = (torch.rand(batch, generator=gen, dtype=torch.float64) * (size - height + 1)).long()
    left = (torch.rand(batch, generator=gen, dtype=torch.float64) * (size - width + 1)).long()
    flips = torch.rand(batch, generator=gen) < 0.5
    return torch.stack([top, left, height, width], dim=1), flips


def cgc_edge_crops(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity crop (twice), 1×1 crops in two corners, full-length strips on two borders
    and non-square interior crops; every other one flipped."""
    boxes = [
        (0, 0, size, size),
        (0, 0, size, size),
        (0, 0, 1, 1),
        (size - 1, size - 1, 1, 1),
        (0, size - 1, size, 1),
        (size - 1, 0, 1, size),
        (1, 2, size - 3, size - 5),
        (size // 3, size // 5, size // 2, size // 4 + 1),
    ]
    return torch.tensor(boxes), torch.arange(len(boxes)) % 2 == 1


# An extended-precision oracle, independent of amc_kernels: the literal size×size pipeline of
# DESIGN §2.6 in np.longdouble (a 64-bit mantissa on x86-64), with its gradient by hand. At
# size 224 the fp64 reference itself is off by ~2e-12 (sums over 50 176 pixels); this is ~1e-18.


@functools.cache
def cgc_taps(n: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) of torch's fp64 bilinear resize n → out, read off the identity basis."""
    eye = torch.eye(n, dtype=torch.float64)[:, None, :, None]
    matrix = F.interpolate(eye, size=(out, 1), mode="bilinear", align_corners=False)
    matrix = matrix[:, 0, :, 0].T.numpy()
    nonzero = matrix != 0
    i0 = nonzero.argmax(1)
    i1 = n - 1 - nonzero[:, ::-1].argmax(1)
    rows = np.arange(out)
    w0 = matrix[rows, i0].astype(np.longdouble)
    w1 = np.where(i1 != i0, matrix[rows, i1], 0.0).astype(np.longdouble)
    return i0, i1, w0, w1


def cgc_resample(x: np.ndarray, taps: tuple, axis: int) -> np.ndarray:
    i0, i1, w0, w1 = taps
    x = np.moveaxis(x, axis, 0)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return np.moveaxis(w0.reshape(shape) * x[i0] + w1.reshape(shape) * x[i1], 0, axis)


def cgc_resample_transposed(g: np.ndarray, taps: tuple, n: int, axis: int) -> np.ndarray:
    i0, i1, w0, w1 = taps
    g = np.moveaxis(g, axis, 0)
    shape = (-1,) + (1,) * (g.ndim - 1)
    out = np.zeros((n, *g.shape[1:]), dtype=np.longdouble)
    np.add.at(out, i0, w0.reshape(shape) * g)
    np.add.at(out, i1, w1.reshape(shape) * g)
    return np.moveaxis(out, 0, axis)


def cgc_oracle(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature: float,
    size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, grad_orig, grad_aug) of the literal pipeline in np.longdouble."""
    eps, tau = np.longdouble(1e-8), np.longdouble(temperature)
    batch, h, w = cam_orig.shape
    rows, cols = cgc_taps(h, size), cgc_taps(w, size)

    def up(c: np.ndarray) -> np.ndarray:
        return cgc_resample(cgc_resample(c, rows, 0), cols, 1)

    def up_transposed(g: np.ndarray) -> np.ndarray:
        return cgc_resample_transposed(cgc_resample_transposed(g, rows, h, 0), cols, w, 1)

    orig, aug = cam_orig.numpy().astype(np.longdouble), cam_aug.numpy().astype(np.longdouble)
    u, v, saved = [], [], []
    for b, ((i, j, ch, cw), flip) in enumerate(zip(crops.tolist(), flips.tolist(), strict=True)):
        up_orig, up_aug = up(orig[b]), up(aug[b])
        sigma_orig, sigma_aug = up_orig.sum() + eps, up_aug.sum() + eps
        window = (up_orig / sigma_orig + eps)[i : i + ch, j : j + cw]
        resized = cgc_resample(cgc_resample(window, cgc_taps(ch, size), 0), cgc_taps(cw, size), 1)
        u.append(resized[:, ::-1] if flip else resized)
        v.append(up_aug / sigma_aug + eps)
        saved.append((i, j, ch, cw, flip, up_orig, sigma_orig, up_aug, sigma_aug))
    u, v = np.stack(u).reshape(batch, -1), np.stack(v).reshape(batch, -1)
    norm_u, norm_v = np.sqrt((u * u).sum(1)), np.sqrt((v * v).sum(1))
    u_hat, v_hat = u / norm_u[:, None], v / norm_v[:, None]
    off_diagonal = ~np.eye(batch, dtype=bool)
    positive, gram = (u_hat * v_hat).sum(1), v_hat @ v_hat.T
    logits = np.concatenate([positive[:, None], np.where(off_diagonal, gram, -np.inf)], 1) / tau
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    prob = shifted / shifted.sum(1, keepdims=True)
    loss = -np.log(prob[:, 0]).mean()
    d_logits = prob / (batch * tau)
    d_logits[:, 0] -= 1 / (batch * tau)
    d_gram = np.where(off_diagonal, d_logits[:, 1:], 0)
    d_u_hat = d_logits[:, :1] * v_hat
    d_v_hat = d_logits[:, :1] * u_hat + (d_gram + d_gram.T) @ v_hat
    d_u = (d_u_hat - u_hat * (d_u_hat * u_hat).sum(1, keepdims=True)) / norm_u[:, None]
    d_v = (d_v_hat - v_hat * (d_v_hat * v_hat).sum(1, keepdims=True)) / norm_v[:, None]
    grad_orig = np.zeros((batch, h, w), dtype=np.longdouble)
    grad_aug = np.zeros((batch, h, w), dtype=np.longdouble)
    for b, (i, j, ch, cw, flip, up_orig, sigma_orig, up_aug, sigma_aug) in enumerate(saved):
        d_resized = d_u[b].reshape(size, size)
        d_resized = d_resized[:, ::-1] if flip else d_resized
        d_sal = np.zeros((size, size), dtype=np.longdouble)
        d_window = cgc_resample_transposed(d_resized, cgc_taps(ch, size), ch, 0)
        d_sal[i : i + ch, j : j + cw] = cgc_resample_transposed(d_window, cgc_taps(cw, size), cw, 1)
        d_up = d_sal / sigma_orig - (d_sal * up_orig).sum() / sigma_orig**2
        grad_orig[b] = up_transposed(d_up)
        d_aug = d_v[b].reshape(size, size)
        grad_aug[b] = up_transposed(d_aug / sigma_aug - (d_aug * up_aug).sum() / sigma_aug**2)
    return loss, grad_orig, grad_aug


def cgc_value_and_grads(
    backend: str, cam_orig: torch.Tensor, cam_aug: torch.Tensor, *args: object, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    orig = cam_orig.detach().clone().requires_grad_()
    aug = cam_aug.detach().clone().requires_grad_()
    loss = functional.cgc_loss(orig, aug, *args, backend=backend, **kwargs)
    grad_orig, grad_aug = torch.autograd.grad(loss, (orig, aug))
    return loss.detach(), grad_orig, grad_aug


def assert_cgc_exact(
    cam_orig: torch.Tensor, cam_aug: torch.Tensor, *args: object, **kwargs: object
) -> None:
    """fp64: the loss and both gradients within 1e-12 of the reference, relative to their size."""
    got = cgc_value_and_grads("cpp", cam_orig, cam_aug, *args, **kwargs)
    expected = cgc_value_and_grads("reference", cam_orig, cam_aug, *args, **kwargs)
    for name, g, e in zip(("loss", "grad_orig", "grad_aug"), got, expected, strict=True):
        scale = e.abs().max().item() if e.numel() else 0.0
        error = (g - e).abs().max().item() if e.numel() else 0.0
        assert error <= 1e-12 * scale + 1e-14, f"{name}: error {error:.3g}, scale {scale:.3g}"


def assert_cgc_matches_reference(*args: object, **kwargs: object) -> None:
    from amc_kernels.testing import compare_backend

    ok, error, bound = compare_backend("cgc_loss", "cpp", args, kwargs)
    assert ok, f"cpp error {error:.3g} above the bound {bound:.3g}"


# (B, h, w, size): one sample; 1×1 maps; odd shapes; B = 33 spans two per-sample tasks (the
# B×B epilogue's row blocks: test_cpp_cgc_fp64_exact_over_many_tasks).
CGC_SHAPES = [(1, 7, 7, 16), (3, 1, 1, 16), (5, 3, 5, 37), (9, 7, 7, 32), (33, 4, 6, 24)]


@pytest.mark.cpp
@needs_cpp_cgc
@pytest.mark.parametrize("dtype", CPP_CGC_DTYPES)
@pytest.mark.parametrize(("batch", "h", "w", "size"), CGC_SHAPES)
def test_cpp_cgc_matches_reference(dtype: torch.dtype, batch: int, h: int, w: int, size: int):
    cam_orig, cam_aug = cgc_maps(batch, h, w, seed=batch + size, dtype=dtype)
    crops, flips = cgc_random_crops(batch, size, seed=batch + size)
    assert_cgc_matches_reference(cam_orig, cam_aug, crops, flips, temperature=0.3, size=size)


@pytest.mark.cpp
@needs_cpp_cgc
@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="np.longdouble is not extended")
@pytest.mark.parametrize("size", [16, 37, 224])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (7, 7)])
def test_cpp_cgc_fp64_exact_over_crop_shapes(size: int, h: int, w: int) -> None:
    # Against the extended-precision oracle: the loss to 1e-14 (DESIGN §2.6), the gradients to
    # 1e-12 of their largest entry (1×1 maps make every map constant: the gradient is 0).
    crops, flips = cgc_edge_crops(size)
    cam_orig, cam_aug = cgc_maps(len(crops), h, w, seed=size + h)
    got = cgc_value_and_grads("cpp", cam_orig, cam_aug, crops, flips, size=size)
    expected = cgc_oracle(cam_orig, cam_aug, crops, flips, 0.5, size)
    for name, g, e, rtol in zip(
        ("loss", "grad_orig", "grad_aug"), got, expected, (1e-14, 1e-12, 1e-12), strict=True
    ):
        scale = float(np.abs(e).max())
        error = float(np.abs(g.numpy().astype(np.longdouble) - e).max())
        assert error <= rtol * scale + 1e-14, f"{name}: error {error:.3g}, scale {scale:.3g}"


@pytest.mark.cpp
@needs_cpp_cgc
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_cgc_fp64_exact_over_many_tasks(threads: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cam_orig, cam_aug = cgc_maps(70, 5, 4, seed=threads)
        crops, flips = cgc_random_crops(70, 20, seed=threads)
        assert_cgc_exact(cam_orig, cam_aug, crops, flips, temperature=0.2, size=20)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_non_contiguous_inputs() -> None:
    cam_orig, cam_aug = cgc_maps(6, 5, 3, seed=11)
    crops, flips = cgc_random_crops(12, 19, seed=11)
    orig_t = cam_orig.transpose(1, 2).contiguous().transpose(1, 2)  # column-major maps
    aug_sliced = torch.cat([cam_aug, cam_aug], dim=2)[:, :, ::2]  # every other column
    crops_t = crops[::2].T.contiguous().T.to(torch.int32)  # column-major int32
    flips_strided = flips[::2]
    assert not any(t.is_contiguous() for t in (orig_t, aug_sliced, crops_t, flips_strided))
    assert_cgc_exact(orig_t, aug_sliced, crops_t, flips_strided, size=19)


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


@pytest.mark.cpp
@needs_cpp_cgc
@pytest.mark.parametrize("kind", ["constant", "identical", "zero", "peaked"])
@pytest.mark.parametrize("dtype", CPP_CGC_DTYPES)
def test_cpp_cgc_special_maps(kind: str, dtype: torch.dtype) -> None:
    cam_orig, cam_aug = cgc_special_maps(kind)
    crops = torch.tensor([[0, 0, 12, 12], [0, 0, 12, 12], [2, 3, 5, 9], [11, 0, 1, 12]])
    flips = torch.tensor([False, False, True, True])
    if dtype == torch.float64:
        assert_cgc_exact(cam_orig, cam_aug, crops, flips, size=12)
    else:
        assert_cgc_matches_reference(cam_orig.to(dtype), cam_aug.to(dtype), crops, flips, size=12)


@pytest.mark.cpp
@needs_cpp_cgc
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
@needs_cpp_cgc
@pytest.mark.parametrize("dtype", CPP_CGC_DTYPES)
def test_cpp_cgc_dtypes_empty_batch_and_single_sample(dtype: torch.dtype) -> None:
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    crops, flips = torch.tensor([[1, 2, 5, 4]]), torch.tensor([True])
    for batch in (0, 1):
        cam_orig, cam_aug = (m.requires_grad_() for m in cgc_maps(batch, 3, 4, seed=1, dtype=dtype))
        loss = functional.cgc_loss(
            cam_orig, cam_aug, crops[:batch], flips[:batch], size=8, backend="cpp"
        )
        assert loss.shape == () and loss.dtype == loss_dtype and loss.item() == 0.0
        grads = torch.autograd.grad(loss, (cam_orig, cam_aug))
        for grad in grads:
            assert grad.shape == (batch, 3, 4) and grad.dtype == dtype
            assert torch.equal(grad, torch.zeros_like(grad))
    cam_orig, cam_aug = (m.requires_grad_() for m in cgc_maps(3, 3, 4, seed=2, dtype=dtype))
    crops, flips = cgc_random_crops(3, 8, seed=2)
    loss = functional.cgc_loss(cam_orig, cam_aug, crops, flips, size=8, backend="cpp")
    assert loss.dtype == loss_dtype
    assert all(g.dtype == dtype for g in torch.autograd.grad(loss, (cam_orig, cam_aug)))


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_gradcheck() -> None:
    cam_orig, cam_aug = cgc_maps(4, 3, 4, seed=3)
    crops, flips = cgc_random_crops(4, 11, seed=3)

    def loss(orig: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        return functional.cgc_loss(orig, aug, crops, flips, temperature=0.4, size=11, backend="cpp")

    assert torch.autograd.gradcheck(loss, (cam_orig.requires_grad_(), cam_aug.requires_grad_()))


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_opcheck() -> None:
    from torch.library import opcheck

    cam_orig, cam_aug = cgc_maps(5, 3, 4, seed=4, dtype=torch.float32)
    crops, flips = cgc_random_crops(5, 9, seed=4)
    opcheck(
        torch.ops.amc_kernels.cgc_loss_fwd.default,
        (cam_orig.requires_grad_(), cam_aug.requires_grad_(), crops, flips, 0.5, 9),
    )
    grad = torch.tensor(0.7)
    opcheck(
        torch.ops.amc_kernels.cgc_loss_bwd.default,
        (grad, cam_orig.detach(), cam_aug.detach(), crops, flips, 0.5, 9),
    )


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_under_torch_compile() -> None:
    cam_orig, cam_aug = cgc_maps(6, 4, 5, seed=6, dtype=torch.float32)
    crops, flips = cgc_random_crops(6, 13, seed=6)

    def loss(orig: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        return 2 * amc_kernels.cgc_loss(orig, aug, crops, flips, size=13, backend="cpp")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (cam_orig, cam_aug, cam_orig, cam_aug)]
    got, expected = compiled(*leaves[:2]), loss(*leaves[2:])
    torch.testing.assert_close(got, expected)
    for g, e in zip(
        torch.autograd.grad(got, leaves[:2]), torch.autograd.grad(expected, leaves[2:]), strict=True
    ):
        torch.testing.assert_close(g, e)


@pytest.mark.cpp
@needs_cpp_cgc
@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(0, 6),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    size=st.integers(1, 30),
    temperature=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_cpp_cgc_property_matches_reference(
    batch: int, h: int, w: int, size: int, temperature: float, seed: int
) -> None:
    cam_orig, cam_aug = cgc_maps(batch, h, w, seed=seed)
    crops, flips = cgc_random_crops(batch, size, seed=seed)
    assert_cgc_exact(cam_orig, cam_aug, crops, flips, temperature=temperature, size=size)


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_double_backward_raises() -> None:
    cam_orig, cam_aug = cgc_maps(3, 3, 3, seed=8)
    crops, flips = cgc_random_crops(3, 7, seed=8)
    orig = cam_orig.requires_grad_()
    loss = functional.cgc_loss(orig, cam_aug, crops, flips, size=7, backend="cpp")
    (grad,) = torch.autograd.grad(loss, orig, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad.sum().backward()


@pytest.mark.cpp
@needs_cpp_cgc
def test_cpp_cgc_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    from amc_kernels import _dispatch

    shapes = ((4, 7, 7), (4, 7, 7), (4, 4), (4,))
    for param in CPP_CGC_DTYPES:
        call = _dispatch.Call("cgc_loss", torch.device("cpu"), param.values[0], shapes)
        assert _dispatch.select(call).backend == "cpp"
    cam_orig, cam_aug = cgc_maps(4, 7, 7, seed=9)
    crops, flips = cgc_random_crops(4, 32, seed=9)
    auto = amc_kernels.cgc_loss(cam_orig, cam_aug, crops, flips, size=32)
    cpp = functional.cgc_loss(cam_orig, cam_aug, crops, flips, size=32, backend="cpp")
    assert torch.equal(auto, cpp)
