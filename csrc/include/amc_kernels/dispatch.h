// dtype dispatch: every kernel reads fp16/bf16/fp32/fp64 and accumulates in acc_t
// (fp64 for fp64 inputs, fp32 otherwise, docs/design.md#2-public-api).
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>

namespace amc_kernels {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace amc_kernels

#define AMC_DISPATCH_FLOATING(dtype, op, ...)                                             \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, dtype, op, \
                                  __VA_ARGS__)
