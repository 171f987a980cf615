// Argument checks for the ops: every message starts with the op name, then says what to fix.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstddef>

#define AMC_CHECK(cond, op, ...) TORCH_CHECK(cond, "amc_kernels.", op, ": ", __VA_ARGS__)

#define AMC_CHECK_DIM(t, n, op, name) \
  AMC_CHECK((t).dim() == (n), op, name, " must have ", n, " dimensions, got shape ", (t).sizes())

#define AMC_CHECK_FLOATING(t, op, name)                                                      \
  AMC_CHECK(at::isFloatingType((t).scalar_type()), op, name,                                 \
            " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", \
            (t).scalar_type())

namespace amc_kernels {

// The dtype the kernels accumulate in: float64 for float64 inputs, float32 for the others.
inline at::ScalarType accumulation_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The output_mask of a backward op (csrc/amc_kernels.cpp): one flag per differentiable input
// of the forward, `inputs` naming them in order, as N bools.
template <size_t N>
std::array<bool, N> checked_output_mask(const c10::List<bool>& mask, const char* op,
                                        const char* inputs) {
  AMC_CHECK(mask.size() == N, op, "output_mask must have one flag per differentiable input (",
            inputs, "), got ", mask.size(), " flags");
  std::array<bool, N> flags;
  for (size_t i = 0; i < N; ++i) {
    flags[i] = mask.get(i);
  }
  return flags;
}

}  // namespace amc_kernels
