// Argument checks and host-side helpers of supcon_loss_fwd / supcon_loss_bwd, shared by
// csrc/cpu/supcon_loss_{,backward_}cpu.cpp and csrc/cuda/supcon_loss_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>
#include <string>

#include "amc_kernels/checks.h"

namespace amc_kernels {

// The checks of both ops, messages prefixed with `op`. `same_device`: also require labels and
// negatives on the device of features (the CUDA kernels).
inline void supcon_check_inputs(const char* op, const at::Tensor& features,
                                const std::optional<at::Tensor>& labels,
                                const std::optional<at::Tensor>& negatives, double temperature,
                                double base_temperature, const std::string& contrast_mode,
                                const std::string& reduction, bool same_device = false) {
  AMC_CHECK_DIM(features, 3, op, "features");
  AMC_CHECK_FLOATING(features, op, "features");
  if (labels.has_value()) {
    AMC_CHECK_DIM(*labels, 1, op, "labels");
    AMC_CHECK(at::isIntegralType(labels->scalar_type(), /*includeBool=*/false), op,
              "labels must be an integer tensor, got ", labels->scalar_type());
    AMC_CHECK(labels->size(0) == features.size(0), op, "labels must have one entry per sample (",
              features.size(0), "), got ", labels->size(0));
    if (same_device) {
      AMC_CHECK(labels->device() == features.device(), op,
                "labels must be on the device of features (", features.device(), "), got ",
                labels->device());
    }
  }
  if (negatives.has_value()) {
    AMC_CHECK_DIM(*negatives, 2, op, "negatives");
    AMC_CHECK(negatives->scalar_type() == features.scalar_type(), op,
              "negatives must have the dtype of features (", features.scalar_type(), "), got ",
              negatives->scalar_type());
    AMC_CHECK(negatives->size(1) == features.size(2), op,
              "negatives must have the feature size of features (", features.size(2), "), got ",
              negatives->size(1));
    if (same_device) {
      AMC_CHECK(negatives->device() == features.device(), op,
                "negatives must be on the device of features (", features.device(), "), got ",
                negatives->device());
    }
  }
  AMC_CHECK(temperature > 0 && base_temperature > 0, op,
            "temperature and base_temperature must be > 0, got ", temperature, " and ",
            base_temperature);
  AMC_CHECK(contrast_mode == "all" || contrast_mode == "one", op,
            "contrast_mode must be 'all' or 'one', got '", contrast_mode, "'");
  AMC_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
            "reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}

// w_a: the upstream gradient of each anchor's loss, [A].
inline at::Tensor supcon_anchor_weights(const at::Tensor& grad, int64_t anchors,
                                        const std::string& reduction, at::ScalarType dtype) {
  const at::Tensor g = grad.to(dtype);
  if (reduction == "none") {
    return g.contiguous();
  }
  const double divisor =
      reduction == "mean" ? static_cast<double>(std::max<int64_t>(anchors, 1)) : 1.0;
  return (g / divisor).expand({anchors}).contiguous();
}

}  // namespace amc_kernels
