// Scalar math shared by every C++ and CUDA kernel (docs/design.md#5-kernel-rules): written once,
// compiled for host and device, so the CPU tests also cover the math the CUDA kernels use. acc_t is
// float or double.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "amc_kernels/macros.h"

namespace amc_kernels {

// ---- row normalisation ---------------------------------------------------------------------

// ε = 1e-12 of x̂ = x / max(‖x‖, ε), F.normalize's default, rounded to acc_t as torch rounds it.
template <typename acc_t>
AMC_HOST_DEVICE acc_t norm_eps() {
  return static_cast<acc_t>(1e-12);
}

// ---- clamped arccos (docs/design.md#21-angular_distance)
// ----------------------------------------------------------

// 1 − δ with δ = 1e-7, rounded to acc_t exactly as torch.clamp rounds its Python bound.
template <typename acc_t>
AMC_HOST_DEVICE acc_t cosine_bound() {
  return static_cast<acc_t>(1.0 - 1e-7);
}

template <typename acc_t>
AMC_HOST_DEVICE acc_t clamp_cosine(acc_t c) {
  const acc_t hi = cosine_bound<acc_t>();
  return c < -hi ? -hi : (c > hi ? hi : c);
}

// θ = arccos(clamp(c, −1 + δ, 1 − δ)).
template <typename acc_t>
AMC_HOST_DEVICE acc_t clamped_arccos(acc_t c) {
  return std::acos(clamp_cosine(c));
}

// dθ/dc: −1/√(1 − c²) inside the bounds (bounds included, as torch.clamp), 0 outside. Finite:
// |dθ/dc| ≤ 1/√(1 − (1 − δ)²) ≈ 2048 in fp32.
template <typename acc_t>
AMC_HOST_DEVICE acc_t clamped_arccos_grad(acc_t c) {
  const acc_t hi = cosine_bound<acc_t>();
  if (c < -hi || c > hi) {
    return acc_t(0);
  }
  return acc_t(-1) / std::sqrt(acc_t(1) - c * c);
}

// dθ/dc with the bound convention of the running torch's clamp, which changed between versions:
// older ones pass the gradient at c = ±(1 − δ) (grad_at_bounds = true, as the function above),
// newer ones (2.14 does) give the minimum-norm subgradient 0 there (pytorch/pytorch#184574).
// Zero outside the bounds, −1/√(1 − c²) inside; written without branches.
template <typename acc_t>
AMC_HOST_DEVICE acc_t clamped_arccos_grad(acc_t c, bool grad_at_bounds) {
  const acc_t hi = cosine_bound<acc_t>();
  const acc_t magnitude = c < acc_t(0) ? -c : c;
  const bool inside = (magnitude < hi) | (grad_at_bounds & (magnitude == hi));  // no branch
  const acc_t k = clamp_cosine(c);
  const acc_t slope = acc_t(-1) / std::sqrt(acc_t(1) - k * k);
  return inside ? slope : acc_t(0);
}

// arccos in a form that compilers vectorise: no branches and no calls besides sqrt. For float,
// Cephes' asinf polynomial P(z) on [0, ½], with acos(c) = π/2 − asin(c) for |c| ≤ ½ and
// acos(c) = 2·asin(√((1 − |c|)/2)) (π minus that for c < 0) above; every lane computes both
// forms and selects. Within 1.3 ulp of the exact arccos on [−1, 1]. For double, std::acos.
AMC_HOST_DEVICE float simd_acos(float c) {
  const float a = std::fabs(c);
  const bool outer = a > 0.5f;
  const float z = outer ? 0.5f * (1.0f - a) : a * a;
  const float root = std::sqrt(z);
  const float s = outer ? root : a;
  const float poly = (((4.2163199048e-2f * z + 2.4181311049e-2f) * z + 4.5470025998e-2f) * z +
                      7.4953002686e-2f) * z + 1.6666752422e-1f;
  const float asin_s = s + s * z * poly;
  const float pi = 3.14159265358979f;
  const float outer_acos = c < 0.0f ? pi - 2.0f * asin_s : 2.0f * asin_s;
  const float inner_acos = 0.5f * pi - (c < 0.0f ? -asin_s : asin_s);
  return outer ? outer_acos : inner_acos;
}

AMC_HOST_DEVICE double simd_acos(double c) { return std::acos(c); }

// clamped_arccos through simd_acos, for loops that should vectorise.
template <typename acc_t>
AMC_HOST_DEVICE acc_t clamped_arccos_simd(acc_t c) {
  return simd_acos(clamp_cosine(c));
}

// ---- AMC pair terms (docs/design.md#22-amc_loss)
// ----------------------------------------------------------

// ℓ = θ² for a same-label pair, max(0, m − θ)² otherwise.
template <typename acc_t>
AMC_HOST_DEVICE acc_t amc_pair_loss(acc_t theta, bool same, acc_t margin) {
  if (same) {
    return theta * theta;
  }
  const acc_t gap = margin - theta;
  return gap > acc_t(0) ? gap * gap : acc_t(0);
}

// dℓ/dθ = 2θ for a same-label pair, −2·max(0, m − θ) otherwise.
template <typename acc_t>
AMC_HOST_DEVICE acc_t amc_pair_loss_grad(acc_t theta, bool same, acc_t margin) {
  if (same) {
    return acc_t(2) * theta;
  }
  const acc_t gap = margin - theta;
  return gap > acc_t(0) ? acc_t(-2) * gap : acc_t(0);
}

// ---- online log-sum-exp --------------------------------------------------------------------

// Running log-sum-exp of a stream of values: the pair (max m, scaled sum s = Σ exp(x − m)).
// Empty state: m = −inf, s = 0. Merging never evaluates exp(−inf − (−inf)).
template <typename acc_t>
struct OnlineLogSumExp {
  acc_t max;
  acc_t sum;

  AMC_HOST_DEVICE static OnlineLogSumExp empty() {
    return {-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
  }

  AMC_HOST_DEVICE void push(acc_t x) { merge({x, acc_t(1)}); }

  AMC_HOST_DEVICE void merge(OnlineLogSumExp other) {
    const acc_t new_max = other.max > max ? other.max : max;
    if (new_max == -std::numeric_limits<acc_t>::infinity()) {
      return;  // both empty
    }
    sum = sum * std::exp(max - new_max) + other.sum * std::exp(other.max - new_max);
    max = new_max;
  }

  // log Σ exp(x); −inf for an empty stream.
  AMC_HOST_DEVICE acc_t value() const { return max + std::log(sum); }
};

// exp(x) in a form that compilers vectorise: no calls, no branches, only selects between values
// computed unconditionally (gcc if-converts them under -fno-trapping-math, as torch builds). For
// the exponentials of max-subtracted logits. float: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in
// two parts), exp(r) by Cephes' expf polynomial, 2^n through the exponent bits; within 2 ulp of
// expf for x ≤ 88. Arguments below ln(FLT_MIN) ≈ −87.34, −inf included, give exactly 0 (no
// subnormals). double: std::exp.
AMC_HOST_DEVICE float simd_exp(float x) {
  const float lowest = -87.33654f;
  const float highest = 88.0f;
  const bool underflow = x < lowest;
  const bool overflow = x > highest;
  const float clamped = underflow ? lowest : (overflow ? highest : x);
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x/ln2)
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof(two_n));
  const float value = exp_r * two_n;
  return underflow ? 0.0f : value;
}

AMC_HOST_DEVICE double simd_exp(double x) { return std::exp(x); }

// ---- bilinear weights (align_corners=False, as torch's upsample_bilinear2d) ----------------

// Output index `dst` of a resize from in_size to out_size reads in[i0]·w0 + in[i1]·w1.
template <typename acc_t>
struct LinearTap {
  int64_t i0;
  int64_t i1;
  acc_t w0;
  acc_t w1;
};

// Source coordinate s = (dst + ½)·in/out − ½, clamped below at 0; i0 = ⌊s⌋ (at most in − 1),
// i1 = min(i0 + 1, in − 1), w1 = s − i0 clamped to [0, 1], w0 = 1 − w1.
template <typename acc_t>
AMC_HOST_DEVICE LinearTap<acc_t> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const acc_t scale = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t src = scale * (static_cast<acc_t>(dst) + acc_t(0.5)) - acc_t(0.5);
  src = src < acc_t(0) ? acc_t(0) : src;
  int64_t i0 = static_cast<int64_t>(std::floor(src));
  i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  const int64_t i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  acc_t w1 = src - static_cast<acc_t>(i0);
  w1 = w1 < acc_t(0) ? acc_t(0) : (w1 > acc_t(1) ? acc_t(1) : w1);
  return {i0, i1, acc_t(1) - w1, w1};
}

// Row `dst` of Resize_{len→out}·Select_{start..start+len}·Resize_{in→out}: the window
// start..start+len of an axis already resized from in to out samples, resized again to out
// samples; `mirrored` reverses the rows (a flip). Four (index, weight) terms over the `in` source
// samples, indices possibly repeated. Resampling the identity basis this way makes the
// per-axis matrices of a crop-and-resize exact (docs/design.md#26-cgc_loss).
template <typename acc_t>
struct CroppedTaps {
  int64_t index[4];
  acc_t weight[4];
};

template <typename acc_t>
AMC_HOST_DEVICE CroppedTaps<acc_t> cropped_resize_taps(int64_t dst, int64_t start, int64_t len,
                                                       bool mirrored, int64_t in_size,
                                                       int64_t out_size) {
  const LinearTap<acc_t> crop =
      linear_tap<acc_t>(mirrored ? out_size - 1 - dst : dst, len, out_size);
  const LinearTap<acc_t> lo = linear_tap<acc_t>(start + crop.i0, in_size, out_size);
  const LinearTap<acc_t> hi = linear_tap<acc_t>(start + crop.i1, in_size, out_size);
  return {{lo.i0, lo.i1, hi.i0, hi.i1},
          {crop.w0 * lo.w0, crop.w0 * lo.w1, crop.w1 * hi.w0, crop.w1 * hi.w1}};
}

// ---- map normalisation (docs/design.md#24-gradcam, §2.6, §2.7)
// ------------------------------------------

// ε = 1e-8 of every map normalisation (s = X / (ΣX + ε) + ε of CGC, ExCon's min-max), rounded
// to acc_t as torch rounds the Python constant.
template <typename acc_t>
AMC_HOST_DEVICE acc_t map_eps() {
  return static_cast<acc_t>(1e-8);
}

// ⟨X/σx + ε, Y/σy + ε⟩ over `count` pixels from ⟨X, Y⟩ and the sums ΣX, ΣY: the inner product
// of two normalised maps without the maps.
template <typename acc_t>
AMC_HOST_DEVICE acc_t normalized_map_inner(acc_t xy, acc_t sum_x, acc_t sum_y, acc_t sigma_x,
                                           acc_t sigma_y, acc_t count) {
  const acc_t eps = map_eps<acc_t>();
  return xy / (sigma_x * sigma_y) + eps * (sum_x / sigma_x + sum_y / sigma_y) + eps * eps * count;
}

// (x − lo) / ((hi − lo) + ε) for a map with minimum lo and maximum hi (ExCon's min-max
// normalisation); hi − lo is max(x − lo) exactly, since rounding is monotonic.
template <typename acc_t>
AMC_HOST_DEVICE acc_t minmax_normalized(acc_t x, acc_t lo, acc_t hi) {
  return (x - lo) / ((hi - lo) + map_eps<acc_t>());
}

}  // namespace amc_kernels
