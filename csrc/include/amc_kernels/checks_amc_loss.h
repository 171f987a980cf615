// Argument checks and host-side helpers of amc_loss_fwd / amc_loss_bwd, shared by
// csrc/cpu/amc_loss_cpu.cpp and csrc/cuda/amc_loss_cuda.cu (same messages on both devices).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/_unique.h>

#include <algorithm>
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

// The checks of amc_loss_bwd: the forward's, the output mask, and grad's size: one entry per
// anchor ("all") or per pair ("halves") for reduction "none", else one. Returns want_features.
inline bool amc_loss_check_backward(const char* op, const at::Tensor& grad,
                                    const at::Tensor& features, const at::Tensor& labels,
                                    const std::string& pairs, const std::string& reduction,
                                    const c10::List<bool>& output_mask, bool same_device = false);

// Dense int32 class ids: equal labels get equal ids, whatever the labels' integer dtype.
inline at::Tensor amc_loss_label_ids(const at::Tensor& labels) {
  return std::get<1>(at::_unique(labels, /*sorted=*/true, /*return_inverse=*/true))
      .to(at::kInt)
      .contiguous();
}

// Unordered pairs the loss averages over: N(N−1)/2 for "all", ⌊N/2⌋ for "halves".
inline int64_t amc_loss_pair_count(int64_t n, const std::string& pairs) {
  return pairs == "all" ? n * (n - 1) / 2 : n / 2;
}

// max(count, 1) as a divisor: an empty mean is 0, as in the reference.
inline double at_least_one(int64_t count) {
  return static_cast<double>(std::max<int64_t>(count, 1));
}

// The upstream gradient as weights (acc dtype, contiguous): dL/dℓ_k per pair for "halves"
// ([⌊N/2⌋]); for "all", anchor weights u with dL/dℓ_ij = u_i + u_j ([N]): g/(N−1) per anchor
// ("none"), g/2 ("sum"), g/(2P) ("mean").
inline at::Tensor amc_loss_weights(const at::Tensor& upstream, int64_t n,
                                   const std::string& pairs, const std::string& reduction) {
  const int64_t count = amc_loss_pair_count(n, pairs);
  if (pairs == "halves") {
    if (reduction == "none") {
      return upstream;
    }
    const double divisor = reduction == "sum" ? 1.0 : at_least_one(count);
    return upstream.div(divisor).expand({count}).contiguous();
  }
  if (reduction == "none") {
    return upstream.div(at_least_one(n - 1));
  }
  const double divisor = reduction == "sum" ? 2.0 : 2.0 * at_least_one(count);
  return upstream.div(divisor).expand({n}).contiguous();
}

inline bool amc_loss_check_backward(const char* op, const at::Tensor& grad,
                                    const at::Tensor& features, const at::Tensor& labels,
                                    const std::string& pairs, const std::string& reduction,
                                    const c10::List<bool>& output_mask, bool same_device) {
  amc_loss_check_inputs(op, features, labels, pairs, reduction, same_device);
  const bool want_features = checked_output_mask<1>(output_mask, op, "features")[0];
  const int64_t n = features.size(0);
  const int64_t per_anchor_or_pair = pairs == "all" ? n : amc_loss_pair_count(n, pairs);
  const int64_t expected = reduction != "none" ? 1 : per_anchor_or_pair;
  AMC_CHECK(grad.numel() == expected, op, "grad must have ", expected,
            " entries (one per anchor for pairs='all', per pair for 'halves', one for a scalar "
            "reduction), got shape ",
            grad.sizes());
  return want_features;
}

}  // namespace amc_kernels
