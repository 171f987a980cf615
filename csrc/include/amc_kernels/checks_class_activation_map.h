// Argument checks of class_activation_map_fwd / _bwd, shared by
// csrc/cpu/class_activation_map_cpu.cpp and csrc/cuda/class_activation_map_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include "amc_kernels/checks.h"

namespace amc_kernels {

struct CamShape {
  int64_t maps;
  int64_t channels;
  int64_t plane;
  int64_t classes;
};

// `same_device`: also require fc_weight and targets on the device of activations (CUDA).
inline CamShape cam_checked_shape(const char* op, const at::Tensor& activations,
                                  const at::Tensor& fc_weight, const at::Tensor& targets,
                                  bool same_device = false) {
  AMC_CHECK_DIM(activations, 4, op, "activations");
  AMC_CHECK_FLOATING(activations, op, "activations");
  AMC_CHECK_DIM(fc_weight, 2, op, "fc_weight");
  AMC_CHECK(fc_weight.scalar_type() == activations.scalar_type(), op,
            "fc_weight must have the dtype of activations (", activations.scalar_type(), "), got ",
            fc_weight.scalar_type());
  AMC_CHECK(fc_weight.size(1) == activations.size(1), op, "fc_weight must be [C, ",
            activations.size(1), "] for activations with ", activations.size(1),
            " channels, got ", fc_weight.sizes());
  AMC_CHECK(targets.dim() == 1 && targets.size(0) == activations.size(0), op,
            "targets must be [", activations.size(0), "], one per map, got ", targets.sizes());
  AMC_CHECK(!at::isFloatingType(targets.scalar_type()) && targets.scalar_type() != at::kBool,
            op, "targets must be an integer tensor, got ", targets.scalar_type());
  if (same_device) {
    AMC_CHECK(fc_weight.device() == activations.device() &&
                  targets.device() == activations.device(),
              op, "fc_weight and targets must be on the device of activations (",
              activations.device(), ")");
  }
  return {activations.size(0), activations.size(1), activations.size(2) * activations.size(3),
          fc_weight.size(0)};
}

}  // namespace amc_kernels
