// Scalar math shared by every C++ and CUDA kernel (DESIGN §5).
#pragma once

#include <cmath>
#include <limits>

#include "amc_kernels/macros.h"

namespace amc_kernels {

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

}  // namespace amc_kernels
