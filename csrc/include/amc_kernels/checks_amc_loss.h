// Argument checks and host-side helpers of amc_loss_fwd / amc_loss_bwd, shared by
// csrc/cpu/amc_loss_cpu.cpp and csrc/cuda/amc_loss_cuda.cu (same messages on both devices).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/_unique.h>

#include <string>
#include <tuple>

#include "amc_kernels/checks.h"

namespace amc_kernels {

// `same_device`: also require labels on the device of features (the CUDA kernels).
inline void amc_loss_check_inputs(const char* op, const at::Tensor& features,
                                  const at::Tensor& labels, const std::string& pairs,
                                  const std::string& reduction, bool same_device = false) {
  AMC_CHECK_DIM(features, 2, op, "features");
  AMC_CHECK_FLOATING(features, op, "features");
  AMC_CHECK_DIM(labels, 1, op, "labels");
  AMC_CHECK(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false), op,
            "labels must be an integer tensor, got ", labels.scalar_type());
  AMC_CHECK(labels.size(0) == features.size(0), op, "labels must have one entry per row (",
            features.size(0), "), got ", labels.size(0));
  if (same_device) {
    AMC_CHECK(labels.device() == features.device(), op,
              "labels must be on the device of features (", features.device(), "), got ",
              labels.device());
  }
  AMC_CHECK(pairs == "all" || pairs == "halves", op, "pairs must be 'all' or 'halves', got '",
            pairs, "'");
  AMC_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
            "reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}

// Dense int32 class ids: equal labels get equal ids, whatever the labels' integer dtype.
inline at::Tensor amc_loss_label_ids(const at::Tensor& labels) {
  return std::get<1>(at::_unique(labels, /*sorted=*/true, /*return_inverse=*/true))
      .to(at::kInt)
      .contiguous();
}

}  // namespace amc_kernels
