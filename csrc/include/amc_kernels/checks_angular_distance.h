// Argument checks of angular_distance_fwd / angular_distance_bwd, shared by
// csrc/cpu/angular_distance_cpu.cpp and csrc/cuda/angular_distance_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

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

}  // namespace amc_kernels
