// Argument checks of saliency_mask_fwd, shared by csrc/cpu/saliency_mask_cpu.cpp and
// csrc/cuda/saliency_mask_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include "amc_kernels/checks.h"

namespace amc_kernels {

// `same_device`: also require saliency on the device of images (CUDA).
inline void saliency_mask_check_inputs(const char* op, const at::Tensor& images,
                                       const at::Tensor& saliency, double top_fraction,
                                       bool same_device = false) {
  AMC_CHECK_DIM(images, 4, op, "images");
  AMC_CHECK_FLOATING(images, op, "images");
  AMC_CHECK_DIM(saliency, 3, op, "saliency");
  AMC_CHECK_FLOATING(saliency, op, "saliency");
  AMC_CHECK(saliency.size(0) == images.size(0), op, "saliency must have one map per image (",
            images.size(0), "), got ", saliency.size(0));
  if (same_device) {
    AMC_CHECK(saliency.device() == images.device(), op,
              "saliency must be on the device of images (", images.device(), "), got ",
              saliency.device());
  }
  AMC_CHECK(top_fraction <= 1.0, op, "top_fraction must be in [0, 1] (or negative for the ",
            "threshold rule), got ", top_fraction);
}

}  // namespace amc_kernels
