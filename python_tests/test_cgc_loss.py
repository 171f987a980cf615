"""cgc_loss (docs/design.md#26-cgc_loss): closed forms, the literal pipeline in numpy, gradients,
dtypes, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _cgc_loss_cases import EPS, bools, boxes, cgc, close, maps
from _helpers import SEEDS, assert_bad_input_raises, sizes, unless_cpp_is_refused
from conftest import ALL_DTYPES, DTYPE_IDS, intercept_dispatch
from hypothesis import given, settings
from hypothesis import strategies as st
from resize_oracle import assert_np_resize_matches_interpolate, np_resize

import amc_kernels
from amc_kernels import functional

# The numpy oracle: the official pipeline at size × size, literally, in float64. Bilinear
# resampling (align_corners=False) is built from per-axis matrices; it never calls
# amc_kernels.reference or F.interpolate.


def np_saliency(cam: np.ndarray, size: int) -> np.ndarray:
    """s(c) = up(c) / (Σ up(c) + 1e-8) + 1e-8 at size × size."""
    up = np_resize(cam, (size, size))
    return up / (up.sum() + EPS) + EPS


def np_unit(x: np.ndarray) -> np.ndarray:
    flat = x.ravel()
    return flat / math.sqrt(float(flat @ flat))


def np_cgc(cam_orig, cam_aug, crops, flips, temperature: float = 0.5, size: int = 224) -> float:
    orig = cam_orig.double().numpy()
    aug = cam_aug.double().numpy()
    crops = np.asarray(crops).tolist()
    flips = np.asarray(flips).tolist()
    batch = len(orig)
    if batch == 0:
        return 0.0
    u, v = [], []
    for b in range(batch):
        i, j, ch, cw = crops[b]
        window = np_saliency(orig[b], size)[i : i + ch, j : j + cw]
        resized = np_resize(window, (size, size))
        u.append(np_unit(resized[:, ::-1] if flips[b] else resized))
        v.append(np_unit(np_saliency(aug[b], size)))
    losses = []
    for b in range(batch):
        logits = [float(u[b] @ v[b])] + [float(v[b] @ v[j]) for j in range(batch) if j != b]
        logits = np.array(logits) / temperature
        top = logits.max()
        losses.append(top + math.log(np.exp(logits - top).sum()) - logits[0])
    return float(np.mean(losses))


# --- closed form ---


def test_one_map_has_only_the_positive_logit() -> None:
    # B = 1: logits = [⟨û, v̂⟩/τ] and CE with a single class is log(e^x / e^x) = 0.
    for crop, flip in [([0, 0, 12, 12], False), ([3, 1, 5, 9], True)]:
        close(cgc(maps(1, 3, 3), maps(1, 3, 3, seed=1), boxes(crop), bools([flip]), size=12), 0.0)


def two_pixel_maps() -> tuple[float, float]:
    # At size = 2 a 2×2 map is not resampled (src = dst exactly).
    # [[1, 0], [0, 0]] → s = (a, ε, ε, ε) with a = 1/(1 + ε) + ε; ones → s ∝ (1, 1, 1, 1).
    # c = cos(s₁, s₂) = (a + 3ε) / (2·√(a² + 3ε²)).
    a = 1 / (1 + EPS) + EPS
    return a, (a + 3 * EPS) / (2 * math.sqrt(a * a + 3 * EPS * EPS))


def test_identity_crops_equal_maps_by_hand() -> None:
    # Identity crops, no flips, cam_aug = cam_orig: both positives are 1, both negatives c:
    # loss = ½·2·[log(e^{1/τ} + e^{c/τ}) − 1/τ] = log(1 + e^{(c − 1)/τ}).
    _, c = two_pixel_maps()
    cams = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    crops, flips = boxes([[0, 0, 2, 2]] * 2), bools([False, False])
    for tau in (0.5, 0.1, 2.0):
        got = cgc(cams, cams, crops, flips, size=2, temperature=tau)
        close(got, math.log1p(math.exp((c - 1) / tau)))


def test_flip_by_hand() -> None:
    # Map 0: cam_orig = [[1, 0], [0, 0]], cam_aug = its mirror [[0, 1], [0, 0]]. With flip the
    # positive is 1; without, p = ⟨(a, ε, ε, ε), (ε, a, ε, ε)⟩ / (a² + 3ε²)
    # = (2aε + 2ε²) / (a² + 3ε²).
    # Map 1: ones with the identity crop (positive 1). The negative of both rows is c.
    a, c = two_pixel_maps()
    ones = [[1.0, 1.0], [1.0, 1.0]]
    orig = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], ones], dtype=torch.float64)
    aug = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], ones], dtype=torch.float64)
    crops, tau = boxes([[0, 0, 2, 2]] * 2), 0.5

    def row(p: float) -> float:  # CE of [p, c] / τ at label 0
        return math.log(math.exp(p / tau) + math.exp(c / tau)) - p / tau

    close(cgc(orig, aug, crops, bools([True, False]), size=2), row(1.0))
    p = (2 * a * EPS + 2 * EPS * EPS) / (a * a + 3 * EPS * EPS)
    close(cgc(orig, aug, crops, bools([False, False]), size=2), (row(p) + row(1.0)) / 2)


def test_crop_and_resize_by_hand() -> None:
    # size = 4 with 4×4 maps (no first resample). Map 0 depends on the column only,
    # (c₀, c₁, c₂, c₃) = (1, 3, 0, 2), so Σ = 4·6 = 24 and s_k = c_k / (24 + ε) + ε.
    # Crop (0, 0, 4, 2) keeps columns 0, 1; the 2 → 4 resize gives per row
    # (s₀, ¾s₀ + ¼s₁, ¼s₀ + ¾s₁, s₁) (src = −¼ → 0, ¼, ¾, 1¼ → clamped), 4 equal rows.
    # cam_aug = ones, so v̂ = 1/4 everywhere and p = Σu / (4‖u‖) = Σrow / (2‖row‖).
    # Map 1: ones, any crop of a constant map is constant: p = 1; both negatives are 1.
    s0, s1 = 1 / (24 + EPS) + EPS, 3 / (24 + EPS) + EPS
    row = [s0, 0.75 * s0 + 0.25 * s1, 0.25 * s0 + 0.75 * s1, s1]
    p = sum(row) / (2 * math.sqrt(sum(x * x for x in row)))
    tau = 0.5
    expected = (math.log(math.exp(p / tau) + math.exp(1 / tau)) - p / tau + math.log(2)) / 2
    orig = torch.ones(2, 4, 4, dtype=torch.float64)
    orig[0] = torch.tensor([1.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    aug = torch.ones(2, 4, 4, dtype=torch.float64)
    for flip in (False, True):  # a constant v̂ cannot see the flip
        got = cgc(orig, aug, boxes([[0, 0, 4, 2], [1, 2, 2, 2]]), bools([flip, False]), size=4)
        close(got, expected)


def test_numpy_resize_matches_torch_interpolate() -> None:
    sizes = [(3, 3, 12, 12), (2, 5, 12, 12), (7, 4, 3, 5), (12, 12, 5, 12)]
    assert_np_resize_matches_interpolate(sizes)


CROPS_4 = [[0, 0, 12, 12], [2, 3, 7, 5], [0, 6, 12, 6], [5, 5, 1, 1]]  # incl. identity, 1×1


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("flips", [(False,) * 4, (True, False, True, True)], ids=["no", "mixed"])
@pytest.mark.parametrize("temperature", [0.5, 0.07])
def test_numpy_oracle(batch: int, flips: tuple[bool, ...], temperature: float) -> None:
    orig, aug = maps(batch, 3, 3, seed=1), maps(batch, 3, 3, seed=2)
    crops, fl = boxes(CROPS_4[:batch]), bools(list(flips[:batch]))
    got = cgc(orig, aug, crops, fl, temperature=temperature, size=12)
    close(got, np_cgc(orig, aug, crops, fl, temperature, 12))


def test_numpy_oracle_non_square_maps_and_downsampling() -> None:
    # 5×3 maps into a 4×4 frame: the first resample shrinks one axis and grows the other.
    orig, aug = maps(3, 5, 3, seed=3), maps(3, 5, 3, seed=4)
    crops, flips = boxes([[0, 0, 4, 4], [1, 0, 3, 2], [3, 3, 1, 1]]), bools([True, False, True])
    close(cgc(orig, aug, crops, flips, size=4), np_cgc(orig, aug, crops, flips, 0.5, 4))


# --- equivalences and properties ---


def test_identity_crops_and_equal_maps_give_positive_cosine_one() -> None:
    # u = v, so every positive logit is 1/τ: loss = mean_b log(1 + Σ_{j≠b} e^{(c_bj − 1)/τ}),
    # with c_bj the cosines of the numpy saliencies.
    cams, tau, size = maps(4, 3, 3, seed=5), 0.5, 12
    v = [np_unit(np_saliency(m, size)) for m in cams.numpy()]
    expected = np.mean(
        [
            math.log1p(sum(math.exp((float(v[b] @ v[j]) - 1) / tau) for j in range(4) if j != b))
            for b in range(4)
        ]
    )
    got = cgc(cams, cams, boxes([[0, 0, size, size]] * 4), bools([False] * 4), size=size)
    close(got, float(expected))


def test_invariant_to_positive_scaling_of_each_map() -> None:
    # s(c·x) = c·up(x) / (c·Σ up(x) + ε) + ε ∝ up(x) + t·1 with t = ε·Σ up(x) + ε²/c: only the
    # ε²/c part depends on c. The direction of up(x) + t·1 moves by at most
    # √N·|Δt| / ‖up(x)‖ ≤ N·ε²·|1/c − 1| / Σ up(x), and crop-resizing keeps this form (a
    # constant resizes to the same constant). With c ∈ [0.1, 10], N = 144 and Σ up(x) ≥ 7
    # that is below 2e-14·|1/c − 1|, far under float64 round-off of the loss (~1e-15 per
    # operation, a few hundred operations): hence the 1e-12 tolerance.
    orig, aug = maps(4, 3, 3, seed=6), maps(4, 3, 3, seed=7)
    crops, flips = boxes(CROPS_4), bools([True, False, False, True])
    base = cgc(orig, aug, crops, flips, size=12)
    scale_o = torch.tensor([0.1, 3.0, 10.0, 0.5], dtype=torch.float64)[:, None, None]
    scale_a = torch.tensor([7.0, 0.2, 1.0, 2.0], dtype=torch.float64)[:, None, None]
    scaled = cgc(orig * scale_o, aug * scale_a, crops, flips, size=12)
    close(scaled, base.item(), tol=1e-12)
    # The test can tell: adding a constant is not a scaling and changes the loss.
    assert abs(cgc(orig + 1.0, aug, crops, flips, size=12).item() - base.item()) > 1e-3


def test_mirroring_every_augmented_map_equals_flipping_every_crop() -> None:
    # Bilinear resampling with align_corners=False commutes with a horizontal mirror, so
    # s(mirror(aug)) = mirror(s(aug)); with every flip on, u and v are both mirrored and every
    # inner product is unchanged.
    orig, aug = maps(3, 3, 4, seed=8), maps(3, 3, 4, seed=9)
    crops = boxes(CROPS_4[1:])
    unflipped = cgc(orig, aug, crops, bools([False] * 3), size=12)
    flipped = cgc(orig, aug.flip(-1), crops, bools([True] * 3), size=12)
    torch.testing.assert_close(flipped, unflipped, rtol=1e-13, atol=1e-13)
    # A flag alone does change the loss (u is not symmetric).
    alone = cgc(orig, aug, crops, bools([True] * 3), size=12)
    assert abs(alone.item() - unflipped.item()) > 1e-6


def test_invariant_to_sample_order() -> None:
    orig, aug = maps(4, 3, 3, seed=10), maps(4, 3, 3, seed=11)
    crops, flips = boxes(CROPS_4), bools([True, False, True, False])
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        cgc(orig[perm], aug[perm], crops[perm], flips[perm], size=12),
        cgc(orig, aug, crops, flips, size=12),
        rtol=1e-13,
        atol=1e-13,
    )


def test_negatives_are_anchored_on_the_augmented_maps() -> None:
    # The code's row b is [⟨û_b, v̂_b⟩, ⟨v̂_b, v̂_j⟩ (j ≠ b)]; the paper's is ⟨û_b, v̂_j⟩ for
    # every j. The loss follows the code (the numpy pipeline) and differs from the paper.
    orig, aug = maps(3, 3, 3, seed=12), maps(3, 3, 3, seed=13)
    crops, flips = boxes(CROPS_4[1:]), bools([False, True, False])
    got = cgc(orig, aug, crops, flips, size=12)
    size, tau = 12, 0.5
    u = []
    for b in range(3):
        i, j, ch, cw = CROPS_4[1 + b]
        window = np_resize(np_saliency(orig[b].numpy(), size)[i : i + ch, j : j + cw], (12, 12))
        u.append(np_unit(window[:, ::-1] if flips[b] else window))
    v = [np_unit(np_saliency(m, size)) for m in aug.numpy()]
    paper = np.mean(
        [
            -u[b] @ v[b] / tau + math.log(sum(math.exp(u[b] @ v[j] / tau) for j in range(3)))
            for b in range(3)
        ]
    )
    close(got, np_cgc(orig, aug, crops, flips, tau, size))
    assert abs(got.item() - paper) > 1e-6


@settings(max_examples=15, deadline=None)
@given(
    **sizes(batch=(1, 4), height=(1, 4), width=(1, 4), size=(2, 10)),
    data=st.data(),
    temperature=st.sampled_from([0.07, 0.5, 1.0]),
    seed=SEEDS,
)
def test_property_matches_numpy_oracle(data, batch, height, width, size, temperature, seed) -> None:
    crops = []
    for _ in range(batch):
        i = data.draw(st.integers(0, size - 1))
        j = data.draw(st.integers(0, size - 1))
        crops.append(
            [i, j, data.draw(st.integers(1, size - i)), data.draw(st.integers(1, size - j))]
        )
    flips = bools(data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    orig, aug = maps(batch, height, width, seed=seed), maps(batch, height, width, seed=seed + 1)
    got = functional.cgc_loss(
        orig, aug, boxes(crops), flips, temperature=temperature, size=size, backend="reference"
    )
    close(got, np_cgc(orig, aug, crops, flips, temperature, size), tol=1e-11)


# --- gradients ---


@pytest.mark.parametrize("batch", [2, 3])
def test_gradcheck_both_maps(batch: int) -> None:
    orig = maps(batch, 3, 3, seed=20).requires_grad_()
    aug = maps(batch, 3, 3, seed=21).requires_grad_()
    crops = boxes([[0, 0, 10, 10], [2, 1, 6, 8], [4, 4, 3, 2]][:batch])
    flips = bools([False, True, True][:batch])

    def fn(orig: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        return cgc(orig, aug, crops, flips, size=10, temperature=0.5)

    # The full Jacobian for B = 2; a random projection of it (fast_mode) for B = 3.
    assert torch.autograd.gradcheck(fn, (orig, aug), fast_mode=batch > 2)


def test_gradient_of_one_map_is_zero() -> None:
    # B = 1 gives the constant 0: its gradient is 0 and defined.
    orig = maps(1, 3, 3, seed=22).requires_grad_()
    aug = maps(1, 3, 3, seed=23).requires_grad_()
    cgc(orig, aug, boxes([1, 1, 5, 5]), bools([True]), size=8).backward()
    assert orig.grad.abs().max().item() == 0.0 and aug.grad.abs().max().item() == 0.0


def test_gradient_through_class_activation_maps() -> None:
    # The fused training path: cgc_loss(CAM(A), ...) is differentiable in A and in W.
    gen = torch.Generator().manual_seed(24)
    a = torch.rand(2, 3, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.rand(3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    crops, flips = boxes([[0, 0, 6, 6], [2, 2, 3, 4]]), bools([True, False])

    def fn(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        targets = torch.tensor([2, 0])
        cam_o = functional.class_activation_map(a, w, targets, backend="reference").relu()
        cam_a = functional.class_activation_map(a.flip(-1), w, targets, backend="reference")
        return cgc(cam_o, cam_a.relu(), crops, flips, size=6)

    assert torch.autograd.gradcheck(fn, (a, w), fast_mode=True)


# --- dtypes and edge cases ---


@pytest.mark.parametrize("dtype", DTYPE_IDS)
def test_result_dtype_and_value(dtype: torch.dtype) -> None:
    orig, aug = maps(3, 3, 3, seed=30, dtype=dtype), maps(3, 3, 3, seed=31, dtype=dtype)
    crops, flips = boxes(CROPS_4[:3]), bools([True, False, True])
    got = cgc(orig, aug, crops, flips, size=12)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # The oracle on the same rounded maps: only the fp32 (or fp64) arithmetic differs.
    expected = np_cgc(orig, aug, crops, flips, 0.5, 12)
    assert abs(got.item() - expected) <= (1e-12 if dtype == torch.float64 else 1e-5)


def test_integer_dtypes_of_crops() -> None:
    orig, aug = maps(2, 3, 3, seed=32), maps(2, 3, 3, seed=33)
    flips = bools([True, False])
    expected = np_cgc(orig, aug, CROPS_4[1:3], flips, 0.5, 12)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        close(cgc(orig, aug, torch.tensor(CROPS_4[1:3], dtype=dtype), flips, size=12), expected)


@pytest.mark.parametrize("dtype", DTYPE_IDS)
def test_empty_batch(dtype: torch.dtype, device: torch.device) -> None:
    orig = torch.zeros(0, 3, 3, dtype=dtype, device=device, requires_grad=True)
    aug = torch.zeros(0, 3, 3, dtype=dtype, device=device, requires_grad=True)
    crops = torch.zeros(0, 4, dtype=torch.long, device=device)
    flips = torch.zeros(0, dtype=torch.bool, device=device)
    loss = functional.cgc_loss(orig, aug, crops, flips, size=12)
    assert loss.dim() == 0 and loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.device.type == device.type
    loss.backward()
    assert orig.grad is not None and orig.grad.shape == (0, 3, 3)


def test_all_zero_maps_stay_finite() -> None:
    # s(0) = 0 / (0 + ε) + ε = ε everywhere: every û and v̂ is the same unit vector, every
    # logit is 1/τ, and the loss is log B. The +1e-8 keeps the loss finite in every dtype.
    for dtype in ALL_DTYPES:
        zero = torch.zeros(3, 3, 3, dtype=dtype, requires_grad=True)
        aug = torch.zeros(3, 3, 3, dtype=dtype, requires_grad=True)
        loss = cgc(zero, aug, boxes(CROPS_4[1:]), bools([True, False, True]), size=12)
        assert abs(loss.item() - math.log(3)) < (1e-12 if dtype == torch.float64 else 1e-6)
        loss.backward()
        # The exact gradient here is 0 (all unit vectors are equal, so every cosine is
        # stationary), but the map is divided by ε twice on the way, and round-off is
        # amplified by ~1/ε²: the computed gradient is finite in fp32 and fp64 only (in fp16
        # it overflows when cast back to the maps' dtype).
        if dtype in (torch.float32, torch.float64):
            assert torch.isfinite(zero.grad).all() and torch.isfinite(aug.grad).all()
    # A zero map among non-zero ones: still finite.
    orig = maps(3, 3, 3, seed=36)
    orig[1] = 0.0
    loss = cgc(orig, maps(3, 3, 3, seed=37), boxes(CROPS_4[1:]), bools([False] * 3), size=12)
    assert torch.isfinite(loss)
    close(loss, np_cgc(orig, maps(3, 3, 3, seed=37), CROPS_4[1:], [False] * 3, 0.5, 12))


@pytest.mark.xfail(
    reason="at all-zero maps the exact gradient is 0, but the computed one is round-off "
    "amplified by ~1/ε² (ε = 1e-8, docs/design.md#26-cgc_loss): finite in fp32/fp64, above "
    "the fp16 maximum once cast back to fp16 (reported)"
)
def test_all_zero_maps_fp16_gradient_is_finite() -> None:
    zero = torch.zeros(3, 3, 3, dtype=torch.float16, requires_grad=True)
    cgc(
        zero, zero.detach().clone(), boxes(CROPS_4[1:]), bools([True, False, True]), size=12
    ).backward()
    assert torch.isfinite(zero.grad).all()


def test_output_is_on_the_input_device(device: torch.device) -> None:
    orig, aug = maps(2, 3, 3, seed=38).to(device), maps(2, 3, 3, seed=39).to(device)
    crops, flips = boxes(CROPS_4[1:3]).to(device), bools([True, False]).to(device)
    loss = functional.cgc_loss(orig, aug, crops, flips, size=12)
    assert loss.device.type == device.type
    close(loss.cpu(), np_cgc(orig.cpu(), aug.cpu(), crops.cpu(), flips.cpu(), 0.5, 12))


# --- validation ---

ORIG = maps(2, 3, 3, seed=40)
AUG = maps(2, 3, 3, seed=41)
CROPS = boxes([[0, 0, 12, 12], [2, 3, 7, 5]])
FLIPS = bools([False, True])
NAN = float("nan")
FRAME = r"is outside the 12×12 frame"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cam_orig": ORIG.numpy()}, TypeError, "cam_orig must be a torch.Tensor"),
        ({"cam_orig": ORIG.long()}, TypeError, "cam_orig must be a floating-point tensor"),
        ({"cam_orig": ORIG[0]}, ValueError, r"cam_orig must have shape \[B, h, w\]"),
        ({"cam_orig": ORIG[None]}, ValueError, r"cam_orig must have shape \[B, h, w\]"),
        ({"cam_orig": ORIG[:, :0]}, ValueError, "cam_orig must have a height and a width"),
        ({"cam_orig": ORIG * NAN}, ValueError, "cam_orig contains NaN"),
        ({"cam_orig": ORIG / 0}, ValueError, "cam_orig contains NaN or infinite"),
        ({"cam_aug": None}, TypeError, "cam_aug must be a torch.Tensor"),
        ({"cam_aug": AUG.int()}, TypeError, "cam_aug must be a floating-point tensor"),
        ({"cam_aug": AUG[0]}, ValueError, "cam_aug must have shape"),
        (
            {"cam_aug": AUG[:, :2]},
            ValueError,
            r"cam_aug must have the shape of cam_orig, \(2, 3, 3\)",
        ),
        ({"cam_aug": AUG[:1]}, ValueError, "cam_aug must have the shape of cam_orig"),
        ({"cam_aug": AUG.float()}, TypeError, "cam_aug has dtype torch.float32 but cam_orig"),
        ({"cam_aug": AUG.to("meta")}, ValueError, "cam_aug is on meta but cam_orig is on cpu"),
        ({"cam_aug": AUG * NAN}, ValueError, "cam_aug contains NaN"),
        ({"crops": CROPS.tolist()}, TypeError, "crops must be a torch.Tensor"),
        ({"crops": CROPS.double()}, TypeError, r"crops must be an integer tensor of \(i, j, h"),
        ({"crops": CROPS.bool()}, TypeError, "crops must be an integer tensor"),
        ({"crops": CROPS[0]}, ValueError, r"crops must have shape \[B, 4\]"),
        ({"crops": CROPS[None]}, ValueError, r"crops must have shape \[B, 4\]"),
        ({"crops": CROPS[:1]}, ValueError, "crops has size 1 in dimension 0 but must have 2"),
        ({"crops": CROPS[:, :3]}, ValueError, "crops has size 3 in dimension 1 but must have 4"),
        ({"crops": CROPS.to("meta")}, ValueError, "crops is on meta but the maps are on cpu"),
        (
            {"crops": boxes([[0, 0, 12, 12], [6, 3, 7, 5]])},
            ValueError,
            r"crops\[1\] = \[6, 3, 7, 5\] " + FRAME,
        ),
        (
            {"crops": boxes([[0, 1, 12, 12], [2, 3, 7, 5]])},
            ValueError,
            r"crops\[0\] = \[0, 1, 12, 12\] " + FRAME,
        ),
        ({"crops": boxes([[-1, 0, 5, 5], [2, 3, 7, 5]])}, ValueError, r"crops\[0\] .*i, j ≥ 0"),
        ({"crops": boxes([[0, 0, 5, 5], [2, -3, 7, 5]])}, ValueError, r"crops\[1\] = .*" + FRAME),
        ({"crops": boxes([[0, 0, 0, 5], [2, 3, 7, 5]])}, ValueError, r"crops\[0\] .*h, w ≥ 1"),
        ({"crops": boxes([[0, 0, 5, 5], [2, 3, 7, 0]])}, ValueError, r"crops\[1\] = .*" + FRAME),
        ({"crops": boxes([[0, 0, 5, 5], [2, 3, 7, -1]])}, ValueError, r"crops\[1\] = .*" + FRAME),
        ({"flips": [False, True]}, TypeError, "flips must be a torch.Tensor"),
        ({"flips": FLIPS.long()}, TypeError, "flips must be a bool tensor, got torch.int64"),
        ({"flips": FLIPS.float()}, TypeError, "flips must be a bool tensor"),
        ({"flips": FLIPS[None]}, ValueError, r"flips must have shape \[B\]"),
        (
            {"flips": bools([True] * 3)},
            ValueError,
            "flips has size 3 in dimension 0 but must have 2",
        ),
        ({"flips": FLIPS.to("meta")}, ValueError, "flips is on meta but cam_orig is on cpu"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": -0.5}, ValueError, "temperature must be > 0"),
        ({"temperature": NAN}, ValueError, "temperature must be finite"),
        ({"temperature": "0.5"}, TypeError, "temperature must be a real number"),
        ({"temperature": True}, TypeError, "temperature must be a real number"),
        ({"size": 0}, ValueError, "size must be > 0"),
        ({"size": -12}, ValueError, "size must be > 0"),
        ({"size": 12.0}, TypeError, "size must be an int, got float"),
        ({"size": True}, TypeError, "size must be an int, got bool"),
        ({"size": 11}, ValueError, r"crops\[0\] = \[0, 0, 12, 12\] is outside the 11×11 frame"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_raises(kwargs: dict, error: type[Exception], match: str) -> None:
    positional = {"cam_orig": ORIG, "cam_aug": AUG, "crops": CROPS, "flips": FLIPS}
    assert_bad_input_raises("cgc_loss", positional, kwargs, error, match, size=12)


def test_cam_orig_on_another_device() -> None:
    with pytest.raises(ValueError, match="cam_aug is on cpu but cam_orig is on meta"):
        functional.cgc_loss(ORIG.to("meta"), AUG, CROPS, FLIPS, size=12)


def test_value_checks_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "0")
    # NaN maps reach the op and give a NaN loss.
    orig = ORIG.clone()
    orig[0, 1, 1] = NAN
    assert cgc(orig, AUG, CROPS, FLIPS, size=12).isnan().item()
    # Crops outside the frame pass validation and reach the backend (intercepted here, so
    # that nothing slices outside the map).
    calls = intercept_dispatch(monkeypatch)
    bad = boxes([[0, 0, 13, 12], [-1, 3, 0, 5]])
    assert functional.cgc_loss(ORIG, AUG, bad, FLIPS, size=12) == "passed"
    assert calls == [("cgc_loss", {"temperature": 0.5, "size": 12})]
    # The metadata checks still run.
    with pytest.raises(ValueError, match="crops has size 3 in dimension 1"):
        functional.cgc_loss(ORIG, AUG, bad[:, :3], FLIPS, size=12)
    monkeypatch.setenv("AMC_KERNELS_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match=r"crops\[0\] = \[0, 0, 13, 12\]"):
        functional.cgc_loss(ORIG, AUG, bad, FLIPS, size=12)


def test_cpp_backend_is_refused_with_candidates_or_matches_reference() -> None:
    got = unless_cpp_is_refused(
        lambda: amc_kernels.cgc_loss(ORIG, AUG, CROPS, FLIPS, size=12, backend="cpp")
    )
    if got is not None:
        close(got, np_cgc(ORIG, AUG, CROPS, FLIPS, 0.5, 12))
