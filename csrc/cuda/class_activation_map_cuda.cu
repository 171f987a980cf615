// class_activation_map_fwd and class_activation_map_bwd on CUDA
// (docs/design.md#25-class_activation_map); the semantics of csrc/cpu/class_activation_map_cpu.cpp.
// Formula: CAM_b = Σ_k W[t_b, k]·A_bk / (H·W).
// Backward, with ĝ_b = dCAM_b/(H·W): dA_bk = W[t_b, k]·ĝ_b, dW[c, k] = Σ_{b: t_b = c} ⟨ĝ_b, A_bk⟩.
// Grid mapping: forward: channel_sum_kernel (maps.cuh), one thread per 16 bytes of pixels of a
// map, grid y = channel chunks, then one thread per pixel sums the chunks in order and divides.
// Backward: one thread per pixel for ĝ; one warp per (b, k) row for the dA row and the row
// dw[b, k] = ⟨ĝ_b, A_bk⟩ (row_grads_kernel); then one thread per channel k adds dw[b, k] into
// dW[t_b, k] for b in order: deterministic, no atomics. A read once (only for dW), nothing read
// for dA but ĝ and W. Targets outside [0, C) trip a device assertion (the Python side checks them).
// Accumulation: acc_type (fp32; fp64 for fp64 inputs).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_class_activation_map.h"
#include "amc_kernels/dispatch.h"
#include "maps.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kOp = "class_activation_map";
constexpr const char* kBwd = "class_activation_map_bwd";

at::Tensor class_activation_map_fwd_cuda(const at::Tensor& activations,
                                          const at::Tensor& fc_weight, const at::Tensor& targets) {
  const CamShape shape = cam_checked_shape(kOp, activations, fc_weight, targets, /*same_device=*/true);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = activations.contiguous();
  const at::Tensor w = fc_weight.contiguous();
  const at::Tensor index = targets.to(at::kLong).contiguous();
  at::Tensor out = at::empty({shape.maps, a.size(2), a.size(3)}, a.options());
  if (out.numel() == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc_options = a.options().dtype(accumulation_dtype(a));
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const int vec = vector_width<scalar_t>(shape.plane, {a_data});
    const int64_t chunks = channel_chunks(shape.maps, shape.channels, shape.plane, vec);
    at::Tensor first = at::empty({shape.maps, shape.plane}, acc_options);
    at::Tensor extra = at::empty({shape.maps, chunks - 1, shape.plane}, acc_options);
    const ChannelWeights<scalar_t> weights{w.const_data_ptr<scalar_t>(),
                                           index.const_data_ptr<int64_t>(), shape.channels,
                                           shape.classes};
    channel_sum(a_data, weights, vec, shape.maps, shape.channels, shape.plane,
                first.mutable_data_ptr<acc_t>(), extra.mutable_data_ptr<acc_t>(), chunks,
                out.mutable_data_ptr<scalar_t>(), static_cast<acc_t>(shape.plane), stream);
  });
  return out;
}

// scaled[i] = grad[i] / plane (ĝ).
template <typename scalar_t, typename acc_t>
__global__ void scaled_grad_kernel(const scalar_t* __restrict__ grad, acc_t* __restrict__ scaled,
                                   int64_t total, acc_t plane) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    scaled[i] = static_cast<acc_t>(grad[i]) / plane;
  }
}

// grad_w[t_b, k] += dw[b, k] for b = 0, 1, …, one thread per channel k (grad_w zeroed).
template <typename acc_t>
__global__ void scatter_rows_kernel(const acc_t* __restrict__ dw, const int64_t* __restrict__ targets,
                                    acc_t* __restrict__ grad_w, int64_t maps, int64_t channels,
                                    int64_t classes) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < channels;
       k += stride) {
    for (int64_t b = 0; b < maps; ++b) {
      const int64_t c = targets[b];
      CUDA_KERNEL_ASSERT(c >= 0 && c < classes);
      grad_w[c * channels + k] += dw[b * channels + k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> class_activation_map_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& activations, const at::Tensor& fc_weight,
    const at::Tensor& targets, const c10::List<bool>& output_mask) {
  const CamShape shape = cam_checked_shape(kOp, activations, fc_weight, targets, /*same_device=*/true);
  const auto [want_a, want_w] =
      checked_output_mask<2>(output_mask, kBwd, "activations, fc_weight");
  AMC_CHECK(grad.dim() == 3 && grad.size(0) == shape.maps &&
                grad.size(1) == activations.size(2) && grad.size(2) == activations.size(3),
            kOp, "grad must have the output's shape [", shape.maps, ", ", activations.size(2),
            ", ", activations.size(3), "], got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = activations.contiguous();
  const at::Tensor w = fc_weight.contiguous();
  const at::Tensor index = targets.to(at::kLong).contiguous();
  const at::Tensor upstream = grad.to(a.scalar_type()).contiguous();
  const auto acc = accumulation_dtype(a);
  at::Tensor grad_a = want_a ? at::empty_like(a) : at::empty({0}, a.options());
  at::Tensor grad_w_acc = at::empty({0}, w.options());
  if (want_w) {
    grad_w_acc = at::zeros({shape.classes, shape.channels}, w.options().dtype(acc));
  }
  if (a.numel() == 0 || !(want_a || want_w)) {
    return {grad_a, grad_w_acc.to(w.scalar_type())};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc_options = a.options().dtype(acc);
    const int64_t rows = shape.maps * shape.channels;
    at::Tensor scaled = at::empty({shape.maps, shape.plane}, acc_options);
    scaled_grad_kernel<<<grid_for(scaled.numel()), kMapThreads, 0, stream>>>(
        upstream.const_data_ptr<scalar_t>(), scaled.mutable_data_ptr<acc_t>(), scaled.numel(),
        static_cast<acc_t>(shape.plane));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    scalar_t* da = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    at::Tensor dw = at::empty({want_w ? rows : 0}, acc_options);
    acc_t* dw_data = want_w ? dw.mutable_data_ptr<acc_t>() : nullptr;
    const int64_t* t = index.const_data_ptr<int64_t>();
    const ChannelWeights<scalar_t> weights{w.const_data_ptr<scalar_t>(), t, shape.channels,
                                           shape.classes};
    const int vec = vector_width<scalar_t>(shape.plane, {a_data, da});
    row_grads(a_data, scaled.const_data_ptr<acc_t>(), weights, da, dw_data, acc_t(1), vec, rows,
              shape.channels, shape.plane, stream);
    if (want_w) {
      scatter_rows_kernel<<<grid_for(shape.channels), kMapThreads, 0, stream>>>(
          dw_data, t, grad_w_acc.mutable_data_ptr<acc_t>(), shape.maps, shape.channels,
          shape.classes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_a, grad_w_acc.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("class_activation_map_fwd", &class_activation_map_fwd_cuda);
  m.impl("class_activation_map_bwd", &class_activation_map_bwd_cuda);
}

}  // namespace amc_kernels::cuda
