// Argument checks and host-side helpers of cgc_loss_fwd / cgc_loss_bwd, shared by
// csrc/cpu/cgc_loss_cpu.cpp and csrc/cuda/cgc_loss_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <optional>

#include "amc_kernels/checks.h"

namespace amc_kernels {

// τ: temperature_tensor (0-d, floating, on cam_orig's device; its value is checked by the caller,
// since reading it would synchronise) or else temperature > 0.
inline void cgc_loss_check_temperature(const char* op, const at::Tensor& cam_orig,
                                       const std::optional<at::Tensor>& temperature_tensor,
                                       double temperature) {
  if (!temperature_tensor.has_value()) {
    AMC_CHECK(temperature > 0, op, "temperature must be positive, got ", temperature);
    return;
  }
  const at::Tensor& tau = *temperature_tensor;
  AMC_CHECK(tau.dim() == 0, op, "temperature_tensor must be 0-d, got shape ", tau.sizes());
  AMC_CHECK_FLOATING(tau, op, "temperature_tensor");
  AMC_CHECK(tau.device() == cam_orig.device(), op, "temperature_tensor must be on the device of "
            "cam_orig (", cam_orig.device(), "), got ", tau.device());
}

// `same_device`: also require cam_aug, crops and flips on the device of cam_orig (CUDA).
inline void cgc_loss_check_inputs(const char* op, const at::Tensor& cam_orig,
                                  const at::Tensor& cam_aug, const at::Tensor& crops,
                                  const at::Tensor& flips,
                                  const std::optional<at::Tensor>& temperature_tensor,
                                  double temperature, int64_t size, bool same_device = false) {
  AMC_CHECK_DIM(cam_orig, 3, op, "cam_orig");
  AMC_CHECK_FLOATING(cam_orig, op, "cam_orig");
  AMC_CHECK(cam_aug.sizes() == cam_orig.sizes(), op, "cam_aug must have the shape of cam_orig, ",
            cam_orig.sizes(), ", got ", cam_aug.sizes());
  AMC_CHECK(cam_aug.scalar_type() == cam_orig.scalar_type(), op,
            "cam_aug must have the dtype of cam_orig");
  AMC_CHECK(cam_orig.size(1) >= 1 && cam_orig.size(2) >= 1, op,
            "the maps need at least one pixel, got shape ", cam_orig.sizes());
  AMC_CHECK(crops.dim() == 2 && crops.size(0) == cam_orig.size(0) && crops.size(1) == 4, op,
            "crops must be [B, 4] (i, j, height, width), got shape ", crops.sizes());
  AMC_CHECK(!at::isFloatingType(crops.scalar_type()), op, "crops must be an integer tensor");
  AMC_CHECK(flips.dim() == 1 && flips.size(0) == cam_orig.size(0), op,
            "flips must be [B], got shape ", flips.sizes());
  cgc_loss_check_temperature(op, cam_orig, temperature_tensor, temperature);
  AMC_CHECK(size >= 1, op, "size must be positive, got ", size);
  if (same_device) {
    AMC_CHECK(cam_aug.device() == cam_orig.device() && crops.device() == cam_orig.device() &&
                  flips.device() == cam_orig.device(),
              op, "cam_aug, crops and flips must be on the device of cam_orig (",
              cam_orig.device(), ")");
  }
}

// The checks of cgc_loss_bwd: the forward's, the output mask and a one-element grad (the loss
// is a scalar). Returns {want_orig, want_aug, want_temperature} (the last false without
// temperature_tensor).
inline std::array<bool, 3> cgc_loss_check_backward(
    const char* op, const at::Tensor& grad, const at::Tensor& cam_orig, const at::Tensor& cam_aug,
    const at::Tensor& crops, const at::Tensor& flips,
    const std::optional<at::Tensor>& temperature_tensor, double temperature, int64_t size,
    const c10::List<bool>& output_mask, bool same_device = false) {
  cgc_loss_check_inputs(op, cam_orig, cam_aug, crops, flips, temperature_tensor, temperature, size,
                        same_device);
  std::array<bool, 3> mask =
      checked_output_mask<3>(output_mask, op, "cam_orig, cam_aug, temperature_tensor");
  mask[2] = mask[2] && temperature_tensor.has_value();
  AMC_CHECK(grad.numel() == 1, op, "grad must hold one value (the loss is a scalar), got shape ",
            grad.sizes());
  return mask;
}

// ∂L/∂τ, 0-d in τ's dtype, from `value` (acc_t, one element); an undefined `value` (not
// requested, or no temperature_tensor) gives the empty [0] of an uncomputed gradient.
inline at::Tensor cgc_loss_temperature_grad(const at::Tensor& cam_orig,
                                            const std::optional<at::Tensor>& temperature_tensor,
                                            const at::Tensor& value) {
  const at::Tensor& like = temperature_tensor.has_value() ? *temperature_tensor : cam_orig;
  if (!value.defined()) {
    return at::empty({0}, like.options());
  }
  return value.reshape({}).to(like.scalar_type());
}

}  // namespace amc_kernels
