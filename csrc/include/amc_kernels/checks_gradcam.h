// Argument parsing and checks of gradcam_fwd / gradcam_bwd, shared by csrc/cpu/gradcam_cpu.cpp
// and csrc/cuda/gradcam_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <string>
#include <utility>

#include "amc_kernels/checks.h"

namespace amc_kernels::gradcam {

enum class Weighting { kMean, kElementwise };
enum class Normalization { kNone, kMax, kMinMax, kSum };

inline Weighting parse_weighting(const char* op, const std::string& weighting) {
  AMC_CHECK(weighting == "mean" || weighting == "elementwise", op,
            "weighting must be \"mean\" or \"elementwise\", got \"", weighting, "\"");
  return weighting == "mean" ? Weighting::kMean : Weighting::kElementwise;
}

inline Normalization parse_normalization(const char* op, const std::string& normalize) {
  if (normalize == "none") {
    return Normalization::kNone;
  }
  if (normalize == "max") {
    return Normalization::kMax;
  }
  if (normalize == "minmax") {
    return Normalization::kMinMax;
  }
  AMC_CHECK(normalize == "sum", op,
            "normalize must be \"none\", \"max\", \"minmax\" or \"sum\", got \"", normalize, "\"");
  return Normalization::kSum;
}

struct MapShape {
  int64_t maps;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t out_height;
  int64_t out_width;

  int64_t plane() const { return height * width; }
  int64_t out_plane() const { return out_height * out_width; }
  bool resized() const { return out_height != height || out_width != width; }
};

// `same_device`: also require gradients on the device of activations (the CUDA kernels).
inline MapShape map_shape(const char* op, const at::Tensor& activations,
                          const at::Tensor& gradients, at::IntArrayRef output_size,
                          bool same_device = false) {
  AMC_CHECK_DIM(activations, 4, op, "activations");
  AMC_CHECK_FLOATING(activations, op, "activations");
  AMC_CHECK(gradients.sizes() == activations.sizes(), op,
            "gradients must have the shape of activations ", activations.sizes(), ", got ",
            gradients.sizes());
  AMC_CHECK(gradients.scalar_type() == activations.scalar_type(), op,
            "gradients must have the dtype of activations (", activations.scalar_type(),
            "), got ", gradients.scalar_type());
  if (same_device) {
    AMC_CHECK(gradients.device() == activations.device(), op,
              "gradients must be on the device of activations (", activations.device(),
              "), got ", gradients.device());
  }
  AMC_CHECK(output_size.empty() || output_size.size() == 2, op,
            "output_size must be [] or [H', W'], got ", output_size);
  MapShape shape{activations.size(0), activations.size(1), activations.size(2),
                 activations.size(3), activations.size(2), activations.size(3)};
  if (!output_size.empty()) {
    AMC_CHECK(output_size[0] > 0 && output_size[1] > 0, op,
              "output_size must be positive, got ", output_size);
    shape.out_height = output_size[0];
    shape.out_width = output_size[1];
    AMC_CHECK(!shape.resized() || shape.plane() > 0, op,
              "cannot resize empty maps of size ", shape.height, "x", shape.width);
  }
  return shape;
}

// The checks of gradcam_bwd beyond map_shape: grad has the output's shape [B, H', W']; raw and
// alpha are the forward's saved [B, H, W] map and [B, K] ("mean"; [B, 0] "elementwise")
// weights, in the accumulation dtype `acc`.
inline void check_saved_state(const char* op, const MapShape& shape, Weighting mode,
                              const at::Tensor& grad, const at::Tensor& raw,
                              const at::Tensor& alpha, at::ScalarType acc) {
  AMC_CHECK(grad.dim() == 3 && grad.size(0) == shape.maps && grad.size(1) == shape.out_height &&
                grad.size(2) == shape.out_width,
            op, "grad must have the output's shape [", shape.maps, ", ", shape.out_height, ", ",
            shape.out_width, "], got ", grad.sizes());
  AMC_CHECK(raw.scalar_type() == acc && raw.numel() == shape.maps * shape.plane(), op,
            "raw must be the forward's [", shape.maps, ", ", shape.height, ", ", shape.width,
            "] ", acc, " map, got ", raw.sizes(), " ", raw.scalar_type());
  const int64_t alpha_width = mode == Weighting::kMean ? shape.channels : 0;
  AMC_CHECK(alpha.scalar_type() == acc && alpha.numel() == shape.maps * alpha_width, op,
            "alpha must be the forward's [", shape.maps, ", ", alpha_width, "] ", acc,
            " weights, got ", alpha.sizes(), " ", alpha.scalar_type());
}

// gradcam_bwd's outputs {dL/dA, dL/dG}: empty ([0]) where output_mask leaves one out; dL/dG is
// [B, K, 1, 1] for "mean" weighting (α_k = mean(G_k) gives each pixel of G_k the same gradient).
inline std::pair<at::Tensor, at::Tensor> backward_outputs(const at::Tensor& a,
                                                          const at::Tensor& g,
                                                          const MapShape& shape, Weighting mode,
                                                          bool want_a, bool want_g) {
  at::Tensor grad_a = want_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor grad_g = at::empty({0}, g.options());
  if (want_g) {
    grad_g = mode == Weighting::kMean
                 ? at::empty({shape.maps, shape.channels, 1, 1}, g.options())
                 : at::empty_like(g);
  }
  return {grad_a, grad_g};
}

}  // namespace amc_kernels::gradcam
