// Argument checks of angular_distance_fwd / angular_distance_bwd, shared by
// csrc/cpu/angular_distance_cpu.cpp and csrc/cuda/angular_distance_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>

#include "amc_kernels/checks.h"

namespace amc_kernels {

// `same_device`: also require y on x's device (the CUDA kernels).
inline void angular_distance_check_inputs(const char* op, const at::Tensor& x,
                                          const std::optional<at::Tensor>& y,
                                          bool same_device = false) {
  AMC_CHECK_DIM(x, 2, op, "x");
  AMC_CHECK_FLOATING(x, op, "x");
  if (y.has_value()) {
    AMC_CHECK_DIM(*y, 2, op, "y");
    AMC_CHECK(y->scalar_type() == x.scalar_type(), op, "y must have x's dtype ",
              x.scalar_type(), ", got ", y->scalar_type());
    AMC_CHECK(y->size(1) == x.size(1), op, "y must have x's feature size ", x.size(1), ", got ",
              y->size(1));
    if (same_device) {
      AMC_CHECK(y->device() == x.device(), op, "y must be on x's device ", x.device(), ", got ",
                y->device());
    }
  }
}

// The checks of angular_distance_bwd: the forward's, grad of θ's shape and dtype, the output
// mask. Returns {want_x, want_y}; want_y is false when y is None (x is both operands then).
inline std::array<bool, 2> angular_distance_check_backward(const char* op, const at::Tensor& grad,
                                                           const at::Tensor& x,
                                                           const std::optional<at::Tensor>& y,
                                                           const c10::List<bool>& output_mask,
                                                           bool same_device = false) {
  angular_distance_check_inputs(op, x, y, same_device);
  const std::array<bool, 2> mask = checked_output_mask<2>(output_mask, op, "x, y");
  const int64_t cols = y.has_value() ? y->size(0) : x.size(0);
  AMC_CHECK_DIM(grad, 2, op, "grad");
  AMC_CHECK(grad.size(0) == x.size(0) && grad.size(1) == cols, op, "grad must have shape [",
            x.size(0), ", ", cols, "], got ", grad.sizes());
  AMC_CHECK(grad.scalar_type() == x.scalar_type(), op, "grad must have x's dtype ",
            x.scalar_type(), ", got ", grad.scalar_type());
  if (same_device) {
    AMC_CHECK(grad.device() == x.device(), op, "grad must be on x's device ", x.device(),
              ", got ", grad.device());
  }
  return {mask[0], mask[1] && y.has_value()};
}

}  // namespace amc_kernels
