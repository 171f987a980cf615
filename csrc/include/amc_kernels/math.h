// Scalar math shared by every C++ and CUDA kernel (DESIGN §5): written once, compiled for host
// and device, so the CPU tests also cover the math the CUDA kernels use. acc_t is float or double.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "amc_kernels/macros.h"

namespace amc_kernels {

// ---- clamped arccos (DESIGN §2.1) ----------------------------------------------------------

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

// ---- AMC pair terms (DESIGN §2.2) ----------------------------------------------------------

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

// ---- map normalisation (DESIGN §2.4, §2.7) ------------------------------------------------

// ε = 1e-8 of every map normalisation, rounded to acc_t as torch rounds the Python constant.
template <typename acc_t>
AMC_HOST_DEVICE acc_t map_eps() {
  return static_cast<acc_t>(1e-8);
}

// (x − lo) / ((hi − lo) + ε) for a map with minimum lo and maximum hi (ExCon's min-max
// normalisation); hi − lo is max(x − lo) exactly, since rounding is monotonic.
template <typename acc_t>
AMC_HOST_DEVICE acc_t minmax_normalized(acc_t x, acc_t lo, acc_t hi) {
  return (x - lo) / ((hi - lo) + map_eps<acc_t>());
}

}  // namespace amc_kernels
