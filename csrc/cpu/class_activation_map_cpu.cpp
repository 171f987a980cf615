// class_activation_map_fwd and class_activation_map_bwd on CPU
// (docs/design.md#25-class_activation_map).
// Formula: CAM_b = Σ_k W[t_b, k]·A_bk / (H·W).
// Backward, with ĝ_b = dCAM_b/(H·W): dA_bk = W[t_b, k]·ĝ_b, and dW[c, k] = Σ_{b: t_b = c} ⟨ĝ_b, A_bk⟩.
// Mapping: at::parallel_for over (map, channel chunk) items (K splits only when there are fewer
// maps than threads): the forward adds each channel into a partial map, summed per map; the
// backward writes dA rows and the per-map row dw[b, k] = ⟨ĝ_b, A_bk⟩, then a parallel loop over
// channel ranges adds the rows dw[b] into dW[t_b] with the maps in order (deterministic, no race).
// A gradient that output_mask leaves out is not computed: dA alone never reads A, and dW alone
// writes no dA.
// Accumulation: acc_type (fp32; fp64 for fp64 inputs); fp16/bf16 rows are converted one at a time.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_class_activation_map.h"
#include "amc_kernels/dispatch.h"
#include "map_utils_cpu.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kOp = "class_activation_map";
constexpr const char* kBwd = "class_activation_map_bwd";

// The targets as contiguous int64, each checked to be a row of fc_weight.
at::Tensor checked_targets(const at::Tensor& targets, const CamShape& shape) {
  at::Tensor index = targets.to(at::kLong).contiguous();
  const int64_t* t = index.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < shape.maps; ++b) {
    AMC_CHECK(t[b] >= 0 && t[b] < shape.classes, kOp, "targets[", b, "] = ", t[b],
              " is outside [0, ", shape.classes, ")");
  }
  return index;
}

template <typename acc_t>
struct Workspace {
  explicit Workspace(const CamShape& shape)
      : a_row(shape.plane), out_row(shape.plane), scaled(shape.plane), weights(shape.channels) {}

  std::vector<acc_t> a_row;    // a channel of A as acc_t
  std::vector<acc_t> out_row;  // a row on its way to a scalar_t output
  std::vector<acc_t> scaled;   // ĝ_b = dCAM_b/(H·W)
  std::vector<acc_t> weights;  // W[t_b] as acc_t
};

at::Tensor class_activation_map_fwd_cpu(const at::Tensor& activations,
                                         const at::Tensor& fc_weight, const at::Tensor& targets) {
  const CamShape shape = cam_checked_shape(kOp, activations, fc_weight, targets);
  const at::Tensor index = checked_targets(targets, shape);
  const at::Tensor a = activations.contiguous();
  const at::Tensor w = fc_weight.contiguous();
  at::Tensor out = at::empty({shape.maps, a.size(2), a.size(3)}, a.options());
  if (out.numel() == 0) {
    return out;
  }
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t chunks = channel_chunks(shape.maps, shape.channels);
    const int64_t plane = shape.plane;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const int64_t* t = index.const_data_ptr<int64_t>();
    scalar_t* result = out.mutable_data_ptr<scalar_t>();
    at::Tensor partial_all =
        at::zeros({shape.maps, chunks, plane}, a.options().dtype(c10::CppTypeToScalarType<acc_t>()));
    acc_t* partial = partial_all.mutable_data_ptr<acc_t>();
    auto workspace = [&] { return Workspace<acc_t>(shape); };
    for_each_chunk(
        shape.maps, shape.channels, chunks, workspace,
        [&](int64_t b, int64_t chunk, int64_t k0, int64_t k1, Workspace<acc_t>& ws) {
          const acc_t* weights =
              read_row(w_data + t[b] * shape.channels + k0, k1 - k0, ws.weights.data());
          acc_t* raw = partial + (b * chunks + chunk) * plane;
          for (int64_t k = k0; k < k1; ++k) {
            const scalar_t* channel = a_data + (b * shape.channels + k) * plane;
            axpy(weights[k - k0], read_row(channel, plane, ws.a_row.data()), raw, plane);
          }
        });
    const acc_t pixels = static_cast<acc_t>(plane);
    for_each_map(shape.maps, workspace, [&](int64_t b, Workspace<acc_t>& ws) {
      acc_t* raw = partial + b * chunks * plane;
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        axpy(acc_t(1), raw + chunk * plane, raw, plane);
      }
      write_row(result + b * plane, plane, ws.out_row.data(), [&](acc_t* dst) {
        for (int64_t i = 0; i < plane; ++i) {
          dst[i] = raw[i] / pixels;
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> class_activation_map_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& activations, const at::Tensor& fc_weight,
    const at::Tensor& targets, const c10::List<bool>& output_mask) {
  const CamShape shape = cam_checked_shape(kOp, activations, fc_weight, targets);
  const auto [want_a, want_w] =
      checked_output_mask<2>(output_mask, kBwd, "activations, fc_weight");
  const at::Tensor index = checked_targets(targets, shape);
  AMC_CHECK(grad.dim() == 3 && grad.size(0) == shape.maps &&
                grad.size(1) == activations.size(2) && grad.size(2) == activations.size(3),
            kOp, "grad must have the output's shape [", shape.maps, ", ", activations.size(2),
            ", ", activations.size(3), "], got ", grad.sizes());
  const at::Tensor a = activations.contiguous();
  const at::Tensor w = fc_weight.contiguous();
  const at::Tensor upstream = grad.to(a.scalar_type()).contiguous();
  at::Tensor grad_a = want_a ? at::empty_like(a) : at::empty({0}, a.options());
  const auto acc_dtype = accumulation_dtype(a);
  at::Tensor grad_w_acc = at::empty({0}, w.options());
  if (want_w) {
    grad_w_acc = at::zeros({shape.classes, shape.channels}, w.options().dtype(acc_dtype));
  }
  if (a.numel() == 0 || !(want_a || want_w)) {
    return {grad_a, grad_w_acc.to(w.scalar_type())};
  }
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t chunks = channel_chunks(shape.maps, shape.channels);
    const int64_t plane = shape.plane;
    const int64_t channels = shape.channels;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const scalar_t* g_data = upstream.const_data_ptr<scalar_t>();
    const int64_t* t = index.const_data_ptr<int64_t>();
    scalar_t* da = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    at::Tensor dw_all = at::empty({want_w ? shape.maps : 0, channels}, grad_w_acc.options());
    acc_t* dw = want_w ? dw_all.mutable_data_ptr<acc_t>() : nullptr;
    const acc_t pixels = static_cast<acc_t>(plane);
    for_each_chunk(
        shape.maps, channels, chunks,
        [&] { return Workspace<acc_t>(shape); },
        [&](int64_t b, int64_t, int64_t k0, int64_t k1, Workspace<acc_t>& ws) {
          acc_t* scaled = ws.scaled.data();
          const acc_t* g = read_row(g_data + b * plane, plane, ws.out_row.data());
          for (int64_t i = 0; i < plane; ++i) {
            scaled[i] = g[i] / pixels;  // ĝ_b
          }
          const acc_t* weights =
              read_row(w_data + t[b] * channels + k0, k1 - k0, ws.weights.data());
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t offset = (b * channels + k) * plane;
            if (dw != nullptr) {
              const acc_t* a_row = read_row(a_data + offset, plane, ws.a_row.data());
              dw[b * channels + k] = dot(scaled, a_row, plane);
            }
            if (da != nullptr) {
              write_row(da + offset, plane, ws.out_row.data(), [&](acc_t* dst) {
                scale_row(weights[k - k0], scaled, dst, plane);
              });
            }
          }
        });
    if (dw == nullptr) {
      return;
    }
    acc_t* grad_w = grad_w_acc.mutable_data_ptr<acc_t>();
    at::parallel_for(0, channels, 256, [&](int64_t k0, int64_t k1) {
      for (int64_t b = 0; b < shape.maps; ++b) {
        axpy(acc_t(1), dw + b * channels + k0, grad_w + t[b] * channels + k0, k1 - k0);
      }
    });
  });
  return {grad_a, grad_w_acc.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("class_activation_map_fwd", &class_activation_map_fwd_cpu);
  m.impl("class_activation_map_bwd", &class_activation_map_bwd_cpu);
}

}  // namespace amc_kernels::cpu
