"""amc_loss (docs/design.md#22-amc_loss) on the cpp and triton backends: tiling, label dtypes,
special vectors, the clamp bound, opcheck, against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import (
    SEEDS,
    assert_backend_matches,
    assert_compiled_triton_matches,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    assert_follows_the_clamp_convention,
    num_threads,
    opcheck_utils,
    sizes,
)
from conftest import (
    EXACT_DTYPES,
    TRITON_DTYPES,
    cpp_at_the_clamp_bounds,
    f64,
    kind_and_dtype,
    longs,
    needs_cpp,
    rand,
    rand_labels,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_amc_loss import DELTA, PAIRS, REDUCTIONS, SPECIAL

from amc_kernels import functional

PAIRS_REDUCTIONS = [(p, r) for p in PAIRS for r in REDUCTIONS]

# --- cpp backend ---


def cpp_amc(features: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return functional.amc_loss(features, labels, backend="cpp", **kwargs)


def value_and_grad(
    backend: str, x: torch.Tensor, labels: torch.Tensor, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = functional.amc_loss(leaf, labels, backend=backend, **kwargs)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out.detach(), grad


def assert_same_as_reference_fp64(x: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
    got = value_and_grad("cpp", x, labels, **kwargs)
    expected = value_and_grad("reference", x, labels, **kwargs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_all_pairs_over_many_tiles(threads: int) -> None:
    # The tiling follows the thread count: for N = 300, 1 thread → 2 tiles of 160 rows (3 tile
    # pairs, one run); 3 threads → 5 tiles of 64 with a partial last one (15 pairs, 3 runs with
    # their own accumulators).
    with num_threads(threads):
        x, labels = rand(300, 7, seed=threads), rand_labels(300, 4, seed=threads)
        for reduction in REDUCTIONS:
            assert_same_as_reference_fp64(x, labels, margin=1.7, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize(
    "label_dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
)
def test_cpp_labels_of_any_integer_dtype(label_dtype: torch.dtype) -> None:
    x = rand(9, 4, seed=3)
    values = [0, 3, 0, 7, 3, 3, 0, 7, 1] if label_dtype == torch.uint8 else [-5, 3, -5, 7, 3]
    labels = torch.tensor(values * 2, dtype=label_dtype)[:9]
    if label_dtype == torch.int64:
        labels = labels + 2**40  # beyond int32
    for pairs, reduction in PAIRS_REDUCTIONS:
        assert_same_as_reference_fp64(x, labels, margin=2.0, pairs=pairs, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
def test_cpp_no_positive_anchors() -> None:
    x = rand(11, 5, seed=4)
    labels = torch.arange(11)
    for pairs, reduction in PAIRS_REDUCTIONS:
        assert_same_as_reference_fp64(x, labels, margin=2.5, pairs=pairs, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
@kind_and_dtype(SPECIAL)
def test_cpp_special_vectors(kind: str, dtype: torch.dtype) -> None:
    rows, label_list = SPECIAL[kind]
    x, labels = torch.tensor(rows, dtype=dtype), longs(label_list)
    for pairs in PAIRS:
        for reduction in ("mean", "none"):
            kwargs = {"margin": 2.0, "pairs": pairs, "reduction": reduction}
            if kind == "zero" and dtype == torch.float16:
                # 1e12-scaled gradients of the zero rows overflow fp16 in both backends: the
                # same infinities, and the finite entries agree to fp16 rounding.
                got = value_and_grad("cpp", x, labels, **kwargs)[1]
                expected = value_and_grad("reference", x, labels, **kwargs)[1]
                torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-3)
                continue
            assert_backend_matches("amc_loss", "cpp", (x, labels), **kwargs)


@cpp_at_the_clamp_bounds
def test_cpp_gradient_at_the_clamp_bound_follows_torch_clamp(
    dtype: torch.dtype, sign: float
) -> None:
    # ⟨x̂_0, x̂_1⟩ = ±(1 − δ) exactly: θ sits on the clamp bound; equal labels give dℓ/dθ = 2θ.
    bound = torch.tensor(1 - DELTA, dtype=dtype)
    x = torch.stack(
        [torch.tensor([2.0, 0.0], dtype=dtype), torch.stack([sign * bound, (1 - bound**2).sqrt()])]
    )
    assert (x[0] / 2 @ x[1]).item() == sign * bound.item()
    labels = longs([4, 4])
    for pairs in PAIRS:
        got = value_and_grad("cpp", x, labels, pairs=pairs)
        expected = value_and_grad("reference", x, labels, pairs=pairs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        # The raw backward with the gradient at the bound passed, then blocked.
        args = (torch.ones((), dtype=dtype), x, labels, 0.5, pairs, "mean")
        bwd = torch.ops.amc_kernels.amc_loss_bwd
        passing, blocked = (bwd(*args, at, [True]) for at in (True, False))
        # The tangential gradient of x_0 (‖x_0‖ = 2): −(2θ / sin θ)·sin θ / 2 = −θ at the bound.
        assert passing[0, 1].item() == pytest.approx(-math.acos(sign * bound.item()), rel=1e-3)
        assert_follows_the_clamp_convention(got[1], passing, blocked)


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("pairs", PAIRS)
def test_cpp_single_sample(pairs: str) -> None:
    # (empty batches: test_conformance.py::test_empty_batch)
    one = f64([[1.0, 2.0]]).requires_grad_()
    for reduction in ("mean", "sum"):
        out = cpp_amc(one, longs([0]), pairs=pairs, reduction=reduction)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, one)
        assert torch.equal(grad, torch.zeros_like(grad))
    expected_none = f64([0.0]) if pairs == "all" else f64([])
    assert torch.equal(cpp_amc(one, longs([0]), pairs=pairs, reduction="none"), expected_none)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(
    **sizes(n=(0, 12), d=(1, 5), classes=(1, 4)),
    margin=st.floats(0.05, 3.5),
    pairs=st.sampled_from(PAIRS),
    reduction=st.sampled_from(REDUCTIONS),
    seed=SEEDS,
)
def test_cpp_property_matches_reference(
    n: int, d: int, classes: int, margin: float, pairs: str, reduction: str, seed: int
) -> None:
    x, labels = rand(n, d, seed=seed), rand_labels(n, classes, seed=seed)
    assert_same_as_reference_fp64(x, labels, margin=margin, pairs=pairs, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    x, labels = rand(6, 3, seed=6), longs([0, 1, 0, 1, 1, 0])
    assert_cpp_is_the_automatic_choice("amc_loss", (x, labels), shapes=((4, 3), (4,)))


# --- triton backend ---


def beyond_one_tile(device: torch.device) -> int:
    """A batch larger than one row tile: 16 under the interpreter, 128 on GPUs."""
    return 37 if device.type == "cpu" else 300


def assert_triton_matches(features: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> None:
    assert_backend_matches("amc_loss", "triton", (features, labels), **kwargs)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize(("pairs", "reduction"), PAIRS_REDUCTIONS)
def test_triton_matches_reference(
    triton_device: torch.device, dtype: torch.dtype, pairs: str, reduction: str
) -> None:
    n = beyond_one_tile(triton_device)
    x = rand(n, 16, seed=81, dtype=dtype).to(triton_device)
    labels = rand_labels(n, 3, seed=81).to(triton_device)
    assert_triton_matches(x, labels, margin=1.0, pairs=pairs, reduction=reduction)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_triton_small_and_odd_batches(triton_device: torch.device, dtype: torch.dtype) -> None:
    for n in (0, 1, 2, 5):
        x = rand(n, 6, seed=n, dtype=dtype).to(triton_device)
        labels = rand_labels(n, 2, seed=n).to(triton_device)
        for pairs, reduction in PAIRS_REDUCTIONS:
            assert_triton_matches(x, labels, margin=2.0, pairs=pairs, reduction=reduction)


@pytest.mark.triton
def test_triton_streams_the_feature_axis_in_chunks(triton_device: torch.device) -> None:
    d = 40 if triton_device.type == "cpu" else 300  # three chunks / chunked on GPUs
    x = rand(11, d, seed=83).to(triton_device)
    labels = rand_labels(11, 3, seed=83).to(triton_device)
    for pairs, reduction in (("all", "mean"), ("all", "none"), ("halves", "none")):
        assert_triton_matches(x, labels, margin=1.6, pairs=pairs, reduction=reduction)


@pytest.mark.triton
def test_triton_non_contiguous_inputs_and_label_dtypes(triton_device: torch.device) -> None:
    x = rand(5, 18, seed=84).to(triton_device).T[::2]  # [9, 5], transposed and strided
    labels = rand_labels(18, 3, seed=84).to(triton_device)[::2]
    assert not (x.is_contiguous() or labels.is_contiguous())
    for label_dtype in (torch.int64, torch.int32, torch.uint8):
        for pairs in PAIRS:
            assert_triton_matches(x, labels.to(label_dtype), margin=1.2, pairs=pairs)


@pytest.mark.triton
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_triton_special_vectors(triton_device: torch.device, kind: str) -> None:
    rows, labels = SPECIAL[kind]
    labels = longs(labels).to(triton_device)
    x = torch.tensor(rows, dtype=torch.float64, device=triton_device)
    for pairs, reduction in PAIRS_REDUCTIONS:
        assert_triton_matches(x, labels, margin=2.0, pairs=pairs, reduction=reduction)
    leaf = x.float().requires_grad_()
    out = functional.amc_loss(leaf, labels, margin=2.0, backend="triton")
    (grad,) = torch.autograd.grad(out, leaf)
    assert bool(torch.isfinite(out)) and bool(torch.isfinite(grad).all())


@pytest.mark.triton
def test_triton_gradient_vanishes_for_clamped_pairs(triton_device: torch.device) -> None:
    x = torch.tensor([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]], dtype=torch.float64)
    x = x.to(triton_device).requires_grad_()
    for labels in ([0, 0], [0, 1]):
        for pairs in PAIRS:
            out = functional.amc_loss(
                x, longs(labels).to(triton_device), margin=2.0, pairs=pairs, backend="triton"
            )
            (grad,) = torch.autograd.grad(out, x)
            assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.triton
@pytest.mark.parametrize(
    ("pairs", "reduction"), [("all", "mean"), ("all", "none"), ("halves", "sum")]
)
def test_triton_gradcheck(triton_device: torch.device, pairs: str, reduction: str) -> None:
    x = rand(6, 4, seed=71).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 0, 1, 1]).to(triton_device)
    assert torch.autograd.gradcheck(
        lambda f: functional.amc_loss(
            f, labels, margin=2.0, pairs=pairs, reduction=reduction, backend="triton"
        ),
        (x,),
        fast_mode=True,
    )


@pytest.mark.triton
def test_triton_opcheck(triton_device: torch.device) -> None:
    from amc_kernels._clamp_convention import CLAMP_GRAD_AT_BOUNDS
    from amc_kernels.triton_kernels import amc_loss as ops

    utils = opcheck_utils(triton_device)
    x = rand(5, 4, seed=1).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 1, 1]).to(triton_device)
    for pairs, reduction in (("all", "mean"), ("all", "none"), ("halves", "none")):
        args = (x, labels, 1.0, pairs, reduction)
        torch.library.opcheck(ops.amc_loss_fwd, args, test_utils=utils)
        grad = torch.ones_like(ops.amc_loss_fwd(*args))
        for mask in ([True], [False]):
            bwd_args = (grad, x.detach(), *args[1:], CLAMP_GRAD_AT_BOUNDS, mask)
            torch.library.opcheck(ops.amc_loss_bwd, bwd_args, test_utils=utils)
        masked = ops.amc_loss_bwd(grad, x.detach(), *args[1:], CLAMP_GRAD_AT_BOUNDS, [False])
        assert masked.shape == (0,)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("pairs", PAIRS)
def test_triton_torch_compile_fullgraph(pairs: str) -> None:
    x = rand(50, 16, seed=1).float().cuda().requires_grad_()
    labels = rand_labels(50, 4, seed=1).cuda()
    options = {"margin": 1.0, "pairs": pairs}
    tolerances = {"value_tol": (1e-5, 1e-6), "grad_tol": (1e-4, 1e-6)}
    assert_compiled_triton_matches("amc_loss", [x], labels, **options, **tolerances)


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.amc_loss(x, longs([0, 1, 0, 1]).to(triton_device), backend="triton")
    assert_double_backward_raises(out, x, "amc_loss_triton_bwd")
