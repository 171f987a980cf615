"""supcon_loss (docs/design.md#23-supcon_loss) on the cpp and triton backends: tiling, large
logits, label dtypes, special vectors, the saved log-sum-exp, opcheck, against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import (
    assert_backend_matches,
    assert_backward_honours_output_masks,
    assert_compiled_triton_matches,
    assert_cpp_is_the_automatic_choice,
    assert_double_backward_raises,
    opcheck_utils,
)
from conftest import TRITON_DTYPES, f64, kind_and_dtype, longs, needs_cpp, rand, rand_labels
from hypothesis import given, settings
from hypothesis import strategies as st
from test_supcon_loss import REDUCTIONS, SPECIAL, SUPCON_CASES, E, supcon, supcon_inputs

from amc_kernels import functional
from amc_kernels.testing import FLOOR, within_reference_error

# --- cpp backend ---


def run_with_grads(backend: str, features, labels, negatives, **kwargs) -> list[torch.Tensor]:
    """[loss, dL/dfeatures, dL/dnegatives?] of a fixed projection of the loss."""
    x = features.detach().clone().requires_grad_()
    leaves = [x]
    neg = None
    if negatives is not None:
        neg = negatives.detach().clone().requires_grad_()
        leaves.append(neg)
    out = functional.supcon_loss(x, labels, negatives=neg, backend=backend, **kwargs)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(
        (out * weights).sum(), leaves, allow_unused=True, materialize_grads=True
    )
    assert all(g.dtype == features.dtype for g in grads)
    return [out.detach(), *grads]


def assert_cpp_matches_reference(features, labels=None, negatives=None, **kwargs) -> None:
    """Value and gradients under the low-precision rule of docs/design.md#7-tests."""
    got = run_with_grads("cpp", features, labels, negatives, **kwargs)
    same = run_with_grads("reference", features, labels, negatives, **kwargs)
    exact = run_with_grads(
        "reference",
        features.double(),
        labels,
        None if negatives is None else negatives.double(),
        **kwargs,
    )
    names = ("loss", "grad features", "grad negatives")[: len(got)]
    for name, g, s, e in zip(names, got, same, exact, strict=True):
        assert g.shape == e.shape and g.dtype == s.dtype, (name, g.shape, e.shape)
        ok, error, bound = within_reference_error(g, s, e, FLOOR[features.dtype])
        assert ok, f"{name}: cpp error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize(
    ("mode", "normalize", "shape"),
    [
        # 1400 anchors: task tiles of 350 rows (on two threads) walk several 256-row GEMM tiles
        ("all", True, (700, 2, 8)),
        ("one", False, (150, 3, 16)),
    ],
)
def test_cpp_fp64_is_exact_to_rounding(mode: str, normalize: bool, shape: tuple) -> None:
    # Unnormalised rows of norm ~1 keep the logits in a sane range.
    scale = 1.0 if normalize else 0.25
    n, views, d = shape
    x, labels = rand(n, views, d, seed=3) * scale, rand_labels(n, 5, seed=3)
    negatives = rand(37, d) * scale
    kwargs = {"contrast_mode": mode, "normalize": normalize, "reduction": "none"}
    got = run_with_grads("cpp", x, labels, negatives, **kwargs)
    expected = run_with_grads("reference", x, labels, negatives, **kwargs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12 * e.abs().max().item())


@pytest.mark.cpp
@needs_cpp
@pytest.mark.parametrize("n", [60, 150], ids=["one tile", "multi-tile"])
def test_cpp_float32_large_logits_are_consistent(n: int) -> None:
    # Unnormalised rows of norm ~120 at T = 0.1: logits ~1e5, where one fp32 ulp of a logit moves
    # its softmax by ~1%. Each pair's logit must be one value in the forward and the backward,
    # also inside diagonal tiles, for the gradient to stay within the reference's error.
    x, labels = rand(n, 2, 16, seed=n) * 30, rand_labels(n, 5, seed=n)
    assert_cpp_matches_reference(
        x.float(), labels, normalize=False, temperature=0.1, reduction="none"
    )


@pytest.mark.cpp
@needs_cpp
def test_cpp_labels_are_any_integers() -> None:
    x = rand(8, 2, 4, seed=5)
    raw = longs([10**12, -3, 7, -3, 10**12, 7, 7, 0])
    dense = longs([3, 0, 2, 0, 3, 2, 2, 1])
    expected = supcon(x, dense, reduction="none")
    for labels in (raw, raw.int() % 1000, (dense * 60).to(torch.uint8), dense.to(torch.int16)):
        got = functional.supcon_loss(x, labels, reduction="none", backend="cpp")
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.cpp
@needs_cpp
@kind_and_dtype(SPECIAL)
def test_cpp_special_vectors(kind: str, dtype: torch.dtype) -> None:
    x = torch.tensor(SPECIAL[kind], dtype=dtype)
    negatives = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], dtype=dtype)
    for labels in (None, longs([0, 0])):
        if kind == "zero" and dtype == torch.float16:
            # d(x / max(‖x‖, 1e-12))/dx = 1e12 at x = 0, above the fp16 maximum: inf in both.
            (grad,) = run_with_grads("cpp", x, labels, None)[1:]
            assert bool(torch.isinf(grad[0, 0]).any()) and bool(torch.isfinite(grad[0, 1]).all())
            continue
        for neg in (None, negatives):
            assert_cpp_matches_reference(x, labels, neg)


@pytest.mark.cpp
@needs_cpp
def test_cpp_anchors_without_positives() -> None:
    # V = 1 and singleton labels: every loss and gradient is exactly 0.
    x = rand(5, 3, seed=1).requires_grad_()
    out = functional.supcon_loss(x, longs([4, 1, 2, 0, 3]), reduction="none", backend="cpp")
    assert torch.equal(out, torch.zeros(5, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))
    # Mixed: one pair among five; the others count in the mean with a zero loss.
    labels = longs([0, 1, 0, 2, 3])
    for negatives in (None, rand(2, 3, seed=2)):
        for reduction in REDUCTIONS:
            assert_cpp_matches_reference(x.detach(), labels, negatives, reduction=reduction)


@pytest.mark.cpp
@needs_cpp
@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 7), reduction=st.sampled_from(REDUCTIONS), **SUPCON_CASES)
def test_cpp_property_matches_reference(
    n, views, d, classes, m, mode, normalize, reduction, temperature, seed
) -> None:
    x, labels, negatives = supcon_inputs(n, views, d, classes, m, seed)
    kwargs = {
        "temperature": temperature,
        "contrast_mode": mode,
        "normalize": normalize,
        "reduction": reduction,
    }
    got = run_with_grads("cpp", x, labels, negatives, **kwargs)
    expected = run_with_grads("reference", x, labels, negatives, **kwargs)
    for g, e in zip(got, expected, strict=True):
        scale = 1.0 + (e.abs().max().item() if e.numel() else 0.0)
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-11 * scale)


@pytest.mark.cpp
@needs_cpp
def test_dispatcher_picks_cpp_for_cpu_tensors() -> None:
    x, labels = rand(4, 2, 3, seed=6), longs([0, 1, 0, 1])
    assert_cpp_is_the_automatic_choice("supcon_loss", (x, labels))


# --- triton backend ---

# (views, contrast_mode, labels, negatives, normalize, reduction): every option in both states,
# with views 1 ([N, D] features), 2 and 3.
TRITON_GRID = [
    (2, "all", True, True, True, "mean"),
    (2, "one", False, True, False, "none"),
    (1, "all", True, False, True, "sum"),
    (3, "one", True, False, False, "mean"),
    (2, "all", False, False, True, "none"),
    (3, "all", False, True, False, "sum"),
    (1, "one", True, True, True, "none"),
]


def assert_triton_matches(features, labels=None, **kwargs) -> None:
    """Value and gradients (features and negatives) against the reference."""
    assert_backend_matches("supcon_loss", "triton", (features, labels), **kwargs)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize(
    ("views", "mode", "with_labels", "with_negatives", "normalize", "reduction"),
    TRITON_GRID,
    ids=[
        f"V{v}-{m}-{'lab' if b else 'nolab'}-{'neg' if n else 'noneg'}-{'norm' if z else 'raw'}-{r}"
        for v, m, b, n, z, r in TRITON_GRID
    ],
)
def test_triton_matches_reference(
    triton_device: torch.device,
    dtype: torch.dtype,
    views: int,
    mode: str,
    with_labels: bool,
    with_negatives: bool,
    normalize: bool,
    reduction: str,
) -> None:
    # Beyond one tile of rows: 16 under the interpreter, 128 on GPUs.
    n = 9 if triton_device.type == "cpu" else 150
    shape = (n, 16) if views == 1 else (n, views, 16)
    x = (rand(*shape, seed=views, dtype=torch.float64) * (1.0 if normalize else 0.3)).to(dtype)
    labels = rand_labels(n, 3, seed=views).to(triton_device) if with_labels else None
    negatives = rand(5, 16, seed=7, dtype=dtype).to(triton_device) if with_negatives else None
    assert_triton_matches(
        x.to(triton_device),
        labels,
        negatives=negatives,
        temperature=0.2,
        contrast_mode=mode,
        normalize=normalize,
        reduction=reduction,
    )


@pytest.mark.triton
def test_triton_streams_the_feature_axis_in_chunks(triton_device: torch.device) -> None:
    d = 40 if triton_device.type == "cpu" else 300  # three chunks / chunked on GPUs
    x = rand(7, 2, d, seed=51).to(triton_device)
    labels = rand_labels(7, 3, seed=51).to(triton_device)
    assert_triton_matches(x, labels, negatives=rand(4, d, seed=52).to(triton_device))
    assert_triton_matches(x, None, contrast_mode="one", reduction="none")


@pytest.mark.triton
def test_triton_anchors_without_positives_and_degenerate_batches(
    triton_device: torch.device,
) -> None:
    def run(x, labels=None, **kwargs):
        return functional.supcon_loss(x, labels, backend="triton", **kwargs)

    dev = triton_device
    # V = 1 and singleton labels: every anchor has no positive and contributes exactly 0.
    x = f64([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dev)
    assert torch.equal(
        run(x, longs([0, 1, 2]).to(dev), reduction="none").cpu(), torch.zeros(3).double()
    )
    # One positive pair among four anchors (the closed form of the reference tests).
    x = f64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dev)
    got = run(
        x, longs([0, 0, 1, 2]).to(dev), temperature=1.0, base_temperature=1.0, reduction="none"
    )
    pair = math.log(E + 1 + 1 / E) - 1
    torch.testing.assert_close(got.cpu(), f64([pair, pair, 0.0, 0.0]), rtol=0, atol=1e-12)
    # A single sample: no denominator (0), or a negative but still no positive (0).
    one = f64([[0.3, -1.0, 2.0]], dev).requires_grad_()
    for negatives in (None, f64([[0.0, 1.0, 0.0]], dev)):
        out = run(one, negatives=negatives)
        (grad,) = torch.autograd.grad(out, one)
        assert out.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    # An empty batch, with and without negatives.
    empty = torch.zeros(0, 2, 4, device=dev, requires_grad=True)
    for negatives in (None, torch.randn(3, 4, device=dev)):
        out = run(empty, negatives=negatives)
        (grad,) = torch.autograd.grad(out, empty)
        assert out.item() == 0.0 and grad.shape == empty.shape
        assert run(empty, negatives=negatives, reduction="none").shape == (0,)
    # Everything one class: every other row is a positive.
    x = rand(6, 2, 5, seed=53).to(dev)
    assert_triton_matches(x, torch.zeros(6, dtype=torch.long, device=dev))


@pytest.mark.triton
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_triton_special_vectors(triton_device: torch.device, kind: str) -> None:
    x = torch.tensor(SPECIAL[kind], dtype=torch.float64, device=triton_device)
    negatives = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64, device=triton_device)
    for labels in (None, longs([0, 0]).to(triton_device)):
        assert_triton_matches(x, labels, negatives=negatives)
        leaf = x.float().requires_grad_()
        out = functional.supcon_loss(leaf, labels, backend="triton")
        (grad,) = torch.autograd.grad(out, leaf)
        assert bool(torch.isfinite(out)) and bool(torch.isfinite(grad).all())


@pytest.mark.triton
def test_triton_non_contiguous_inputs_and_label_dtypes(triton_device: torch.device) -> None:
    x = rand(2, 6, 5, seed=41).to(triton_device).transpose(0, 1)  # [6, 2, 5], view-major memory
    negatives = rand(5, 6, seed=42).to(triton_device).T[::2]  # [3, 5]
    labels = rand_labels(12, 3, seed=41).to(triton_device)[::2]
    assert not (x.is_contiguous() or negatives.is_contiguous() or labels.is_contiguous())
    for label_dtype in (torch.int64, torch.int32, torch.uint8):
        assert_triton_matches(x, labels.to(label_dtype), negatives=negatives, reduction="none")


@pytest.mark.triton
@pytest.mark.parametrize(
    ("with_labels", "mode", "normalize"), [(True, "all", True), (False, "one", False)]
)
def test_triton_gradcheck(
    triton_device: torch.device, with_labels: bool, mode: str, normalize: bool
) -> None:
    x = rand(4, 2, 3, seed=21).to(triton_device).requires_grad_()
    negatives = rand(2, 3, seed=22).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 0]).to(triton_device) if with_labels else None
    assert torch.autograd.gradcheck(
        lambda f, g: functional.supcon_loss(
            f,
            labels,
            negatives=g,
            temperature=0.5,
            contrast_mode=mode,
            normalize=normalize,
            reduction="none",
            backend="triton",
        ),
        (x, negatives),
        fast_mode=True,
    )


@pytest.mark.triton
def test_triton_opcheck(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    utils = opcheck_utils(triton_device)
    x = rand(5, 2, 4, seed=1).to(triton_device).requires_grad_()
    negatives = rand(3, 4, seed=2).to(triton_device).requires_grad_()
    labels = longs([0, 1, 0, 1, 1]).to(triton_device)
    for lab, neg in ((labels, negatives), (None, None)):
        args = (x, lab, neg, 0.1, 0.07, "all", True, "mean")
        torch.library.opcheck(ops.supcon_loss_fwd, args, test_utils=utils)
        loss, lse = ops.supcon_loss_fwd(*args)
        assert lse.shape == (10,) and lse.dtype == loss.dtype
        detached = None if neg is None else neg.detach()
        bwd_args = (torch.ones_like(loss), x.detach(), lab, detached, lse, *args[3:])
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(ops.supcon_loss_bwd, (*bwd_args, mask), test_utils=utils)


@pytest.mark.triton
def test_triton_saves_the_natural_log_sum_exp(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    x = rand(5, 2, 4, seed=3, dtype=torch.float64).to(triton_device)
    negatives = rand(3, 4, seed=4, dtype=torch.float64).to(triton_device)
    _, lse = ops.supcon_loss_fwd(x, None, negatives, 0.5, 0.07, "all", True, "none")
    z = torch.nn.functional.normalize(torch.cat([x.transpose(0, 1).reshape(10, 4), negatives]))
    logits = (z[:10] @ z.T / 0.5).fill_diagonal_(float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=1), rtol=1e-13, atol=0)
    _, alone = ops.supcon_loss_fwd(x[:1, :1], None, None, 0.5, 0.07, "all", True, "none")
    assert alone.tolist() == [float("-inf")]  # an anchor that is the only row


@pytest.mark.triton
def test_triton_backward_honours_output_mask(triton_device: torch.device) -> None:
    from amc_kernels.triton_kernels import supcon_loss as ops

    x = rand(6, 2, 4, seed=5, dtype=torch.float64).to(triton_device)
    negatives = rand(3, 4, seed=6, dtype=torch.float64).to(triton_device)
    labels = longs([0, 1, 0, 2, 1, 1]).to(triton_device)
    cases = ((labels, negatives, "all"), (None, negatives, "one"), (labels, None, "all"))
    for lab, neg, mode in cases:
        args = (0.1, 0.07, mode, True, "none")
        loss, lse = ops.supcon_loss_fwd(x, lab, neg, *args)
        grad = rand(loss.shape[0], seed=7, dtype=torch.float64).to(triton_device)
        assert_backward_honours_output_masks(ops.supcon_loss_bwd, grad, x, lab, neg, lse, *args)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("with_labels", [True, False])
def test_triton_torch_compile_fullgraph(with_labels: bool) -> None:
    x = rand(64, 2, 32, seed=1).float().cuda().requires_grad_()
    labels = rand_labels(64, 5, seed=1).cuda() if with_labels else None
    assert_compiled_triton_matches(
        "supcon_loss", [x], labels, value_tol=(1e-5, 1e-5), grad_tol=(1e-4, 1e-6)
    )


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.slow
def test_triton_memory_is_linear_in_the_batch() -> None:
    # 65536 view rows of D = 128 in bf16 (16 MB): the A × C logits alone would take 16 GB in
    # fp32; the kernels need O(C·D) working memory (a few fp32 copies of Z).
    x = torch.randn(32768, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(100, (32768,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    functional.supcon_loss(x, labels, backend="triton").backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 512 * 2**20


@pytest.mark.triton
def test_triton_double_backward_raises(triton_device: torch.device) -> None:
    x = rand(4, 2, 3, seed=1).to(triton_device).requires_grad_()
    out = functional.supcon_loss(x, backend="triton")
    assert_double_backward_raises(out, x, "supcon_loss_triton_bwd")
