"""Scalar math of the Triton kernels, the mirror of csrc/include/amc_kernels/math.h
(docs/design.md#5-kernel-rules).

Every function works elementwise on fp32 or fp64 tensors; ``FP64`` (constexpr) says which, so
that the constants and the precise operations are chosen at compile time.

* :func:`clamped_arccos`: θ = arccos(clamp(c, −1+δ, 1−δ)) from our own polynomial, because
  libdevice's acos fails under the interpreter. asin(s) = s + s·z·P(z), z = s², is a degree-4
  minimax fit on s ∈ [0, ½] (iteratively reweighted least squares on Chebyshev nodes; relative
  error 5.8e-9 with the coefficients rounded to fp32). |c| ≤ ½ uses θ = π/2 ∓ asin(|c|);
  |c| > ½ uses the half-angle form θ = 2·asin(√((1−|c|)/2)) (π minus that for c < 0), where
  1−|c| is exact, so nothing cancels near ±1. fp64 adds one Newton step on sin(t) = s (Taylor
  sine to t¹⁵, derivative √(1−s²)), which takes the fp32-accurate polynomial to fp64 accuracy.
  Measured against torch.arccos in fp64 of the same cosine, on 2·10⁶ + 1 evenly spaced points
  of [−1+δ, 1−δ] plus 2·10⁵ points within 1e-3 of ±1 (under the interpreter; the test in
  python_tests/test_angular_distance_kernels.py keeps a margin for the fused multiply-adds of GPUs):
  fp32: max |error| 3.0e-7 rad, 1.26 ulp of θ (torch.arccos in fp32: 1.9e-7 rad, 0.79 ulp);
  fp64: max |error| 8.9e-16 rad, 2 ulp of θ.
* :func:`clamped_arccos_grad`: dθ/dc = −1/√(1 − c·c) (as torch.arccos's backward evaluates it)
  inside the bounds, 0 outside. At the bounds themselves it follows the running torch's clamp
  (``AT_BOUNDS``, see :mod:`amc_kernels._clamp_convention`), so the kernels reproduce the
  reference exactly there too.
* :func:`amc_pair_loss`, :func:`amc_pair_loss_grad`: ℓ(θ) and dℓ/dθ of the AMC loss.
* :func:`online_lse_update`: one tile of a streaming log-sum-exp in base 2.

The bounds ±(1 − δ), δ = ARCCOS_DELTA, are rounded to the compute dtype as torch.clamp rounds its
Python bound: 0.99999988079071044921875 (1 − 2⁻²³) in fp32, 0.9999999 in fp64.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from .._spec import ARCCOS_DELTA


def _to_fp32(value: float) -> float:
    """`value` rounded to the nearest fp32, as torch.clamp rounds a Python bound."""
    return struct.unpack("f", struct.pack("f", value))[0]


#: 1 − δ rounded to fp32 (= 1 − 2⁻²³ for δ = 1e-7) and to fp64.
COS_BOUND_FP32 = tl.constexpr(_to_fp32(1.0 - ARCCOS_DELTA))
COS_BOUND_FP64 = tl.constexpr(1.0 - ARCCOS_DELTA)
# π/2 and π as a double plus the remainder, so that π/2 − t loses nothing in fp64.
HALF_PI_HI = tl.constexpr(1.5707963267948966)
HALF_PI_LO = tl.constexpr(6.123233995736766e-17)
PI_HI = tl.constexpr(3.141592653589793)
PI_LO = tl.constexpr(1.2246467991473532e-16)
# asin(s) ≈ s + s·z·(P0 + P1·z + P2·z² + P3·z³ + P4·z⁴), z = s², s ∈ [0, ½].
ASIN_P0 = tl.constexpr(0.16666752099990845)
ASIN_P1 = tl.constexpr(0.07495297491550446)
ASIN_P2 = tl.constexpr(0.04547037556767464)
ASIN_P3 = tl.constexpr(0.02417951636016369)
ASIN_P4 = tl.constexpr(0.04216630756855011)


@triton.jit
def precise_sqrt(x, FP64: tl.constexpr):
    """IEEE square root: tl.sqrt is the fast approximation in fp32."""
    if FP64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def cosine_bound(FP64: tl.constexpr):
    """1 − δ as a tensor of the compute dtype: tl.minimum would round a Python float to fp32."""
    if FP64:
        return tl.full([], COS_BOUND_FP64, tl.float64)
    else:
        return tl.full([], COS_BOUND_FP32, tl.float32)


@triton.jit
def _taylor_sin(t):
    """sin t for |t| ≤ 0.53 to below 1e-19 relative (terms up to t¹⁵/15!)."""
    u = t * t
    p = -7.647163731819816e-13
    p = p * u + 1.6059043836821613e-10
    p = p * u - 2.505210838544172e-08
    p = p * u + 2.7557319223985893e-06
    p = p * u - 1.984126984126984e-04
    p = p * u + 8.333333333333333e-03
    p = p * u - 1.6666666666666666e-01
    return t + t * u * p


@triton.jit
def _asin_small(s, FP64: tl.constexpr):
    """asin s for s ∈ [0, ½]."""
    z = s * s
    p = ASIN_P4 * z + ASIN_P3
    p = p * z + ASIN_P2
    p = p * z + ASIN_P1
    p = p * z + ASIN_P0
    t = s + s * z * p
    if FP64:
        # One Newton step on sin(t) = s; cos t = √(1 − s²) is exact enough for the derivative.
        t = t - (_taylor_sin(t) - s) / tl.sqrt((1.0 - s) * (1.0 + s))
    return t


@triton.jit
def clamped_arccos(c, FP64: tl.constexpr):
    """θ = arccos(clamp(c, −1 + δ, 1 − δ)) in radians, elementwise."""
    hi = cosine_bound(FP64)
    k = tl.minimum(tl.maximum(c, -hi), hi)
    a = tl.abs(k)
    outer = a > 0.5
    s = tl.where(outer, precise_sqrt(0.5 * (1.0 - a), FP64), a)
    t = _asin_small(s, FP64)
    negative = k < 0.0
    inner = (HALF_PI_HI - tl.where(negative, -t, t)) + HALF_PI_LO
    outer_theta = tl.where(negative, (PI_HI - 2.0 * t) + PI_LO, 2.0 * t)
    return tl.where(outer, outer_theta, inner)


@triton.jit
def clamped_arccos_grad(c, FP64: tl.constexpr, AT_BOUNDS: tl.constexpr):
    """dθ/dc: −1/√(1 − c²) inside the bounds, 0 outside; at the bounds as the running torch."""
    hi = cosine_bound(FP64)
    a = tl.abs(c)
    inside = a <= hi if AT_BOUNDS else a < hi
    k = tl.minimum(a, hi)
    one_minus_square = 1.0 - k * k  # as torch.arccos's backward, to match the reference
    slope = -1.0 / tl.sqrt(one_minus_square) if FP64 else -tl.rsqrt(one_minus_square)
    return tl.where(inside, slope, 0.0)


@triton.jit
def amc_pair_loss(theta, same, margin):
    """ℓ = θ² for a same-label pair, max(0, m − θ)² otherwise."""
    gap = tl.maximum(margin - theta, 0.0)
    return tl.where(same, theta * theta, gap * gap)


@triton.jit
def amc_pair_loss_grad(theta, same, margin):
    """dℓ/dθ = 2θ for a same-label pair, −2·max(0, m − θ) otherwise."""
    gap = tl.maximum(margin - theta, 0.0)
    return tl.where(same, 2.0 * theta, -2.0 * gap)


@triton.jit
def online_lse_update(m, s, x):
    """Merge the rows of tile x [R, C] (−inf = absent) into the running base-2 log-sum-exp.

    State per row: the max m (−inf while empty) and s = Σ 2^(x − m). Returns (m', s').
    log2 Σ 2^x = m + log2(s). Never evaluates −inf − (−inf).
    """
    m_new = tl.maximum(m, tl.max(x, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    s_new = s * tl.exp2(m - shift) + tl.sum(tl.exp2(x - shift[:, None]), axis=1)
    return m_new, s_new
