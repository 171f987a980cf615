// gradcam_fwd and gradcam_bwd on CPU (docs/design.md#24-gradcam).
// Formula: raw_b = Σ_k α_bk·A_bk with α_bk = mean_hw G_bk (weighting "mean"), or
// raw_b = Σ_k G_bk ⊙ A_bk ("elementwise"); then ReLU (if relu), the bilinear resize to H'×W'
// (align_corners=False, torch's evaluation order) and the per-map normalisation: "max"
// x/(max+ε), "minmax" (x−min)/(max(x−min)+ε), "sum" x/(Σx+ε)+ε, with ε = map_eps (math.h).
// The forward returns raw [B, H, W] and α [B, K] besides the maps (O(B·(H·W + K)), against
// the B·K·H·W inputs), so the backward never re-reads A and G to rebuild them.
// Backward: recomputes the resized map and its statistics from raw, then goes back through the
// normalisation (amax/amin split their gradient evenly among ties, as torch), the resize (its
// transpose), the ReLU (zero gradient at 0) and the weighting:
//   mean:        dA_bk = α_bk·dRaw_b,  dG_bk = ⟨dRaw_b, A_bk⟩/(H·W) at every pixel, returned
//                once per channel as [B, K, 1, 1] (the caller expands it: a third less traffic);
//   elementwise: dA = G ⊙ dRaw,        dG = A ⊙ dRaw;
// a gradient that output_mask leaves out is neither allocated nor computed, and the backward
// reads A only for dG, G only for the elementwise dA.
// Mapping: at::parallel_for over (map, channel chunk) items, the chunks splitting K only when
// there are fewer maps than threads: the forward's items sum partial raw maps (one pass over A
// and G), an epilogue per map reduces them and writes the map; the backward's epilogue per map
// gives dRaw, then its items write dA and dG (at most one pass over A, and over G for
// "elementwise").
// Accumulation: acc_type (fp32; fp64 for fp64 inputs); fp16/bf16 rows are converted one at a time.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_gradcam.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "map_utils_cpu.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kOp = "gradcam";
constexpr const char* kBwd = "gradcam_bwd";

using gradcam::MapShape;
using gradcam::Normalization;
using gradcam::Weighting;

// ---- normalisation of one map, forward and backward ----------------------------------------

template <typename acc_t>
void normalize_map(Normalization mode, acc_t* map, int64_t n) {
  const acc_t eps = map_eps<acc_t>();
  if (mode == Normalization::kMax) {
    const acc_t denominator = min_max(map, n).second + eps;
    for (int64_t i = 0; i < n; ++i) {
      map[i] = map[i] / denominator;
    }
  } else if (mode == Normalization::kMinMax) {
    const auto [lo, hi] = min_max(map, n);
    for (int64_t i = 0; i < n; ++i) {
      map[i] = minmax_normalized(map[i], lo, hi);
    }
  } else if (mode == Normalization::kSum) {
    const acc_t denominator = sum_row(map, n) + eps;
    for (int64_t i = 0; i < n; ++i) {
      map[i] = map[i] / denominator + eps;
    }
  }
}

// grad[i] += share/count where values[i] == extreme: the backward of amax/amin (ties split).
template <typename acc_t>
void add_to_ties(const acc_t* values, acc_t extreme, acc_t share, acc_t* grad, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    count += values[i] == extreme;
  }
  const acc_t each = share / static_cast<acc_t>(count);
  for (int64_t i = 0; i < n; ++i) {
    grad[i] += values[i] == extreme ? each : acc_t(0);
  }
}

// grad: ∂L/∂out on entry, ∂L/∂map on return, for out = normalize(map). shifted: n scratch.
template <typename acc_t>
void normalize_map_backward(Normalization mode, const acc_t* map, acc_t* grad, acc_t* shifted,
                            int64_t n) {
  const acc_t eps = map_eps<acc_t>();
  if (mode == Normalization::kMax) {
    // out = x / d, d = max x + ε: dx = g/d, dmax = −⟨g, x⟩/d².
    const acc_t hi = min_max(map, n).second;
    const acc_t denominator = hi + eps;
    const acc_t grad_max = -dot(grad, map, n) / (denominator * denominator);
    scale_row(acc_t(1) / denominator, grad, grad, n);
    add_to_ties(map, hi, grad_max, grad, n);
  } else if (mode == Normalization::kMinMax) {
    // out = s / d, s = x − min, d = max s + ε: ds = g/d, dmax s = −⟨g, s⟩/d², dmin = −Σ ds.
    const auto [lo, hi] = min_max(map, n);
    const acc_t range = hi - lo;
    const acc_t denominator = range + eps;
    for (int64_t i = 0; i < n; ++i) {
      shifted[i] = map[i] - lo;
    }
    const acc_t grad_range = -dot(grad, shifted, n) / (denominator * denominator);
    for (int64_t i = 0; i < n; ++i) {
      grad[i] = grad[i] / denominator;
    }
    add_to_ties(shifted, range, grad_range, grad, n);
    add_to_ties(map, lo, -sum_row(grad, n), grad, n);
  } else if (mode == Normalization::kSum) {
    // out = x / d + ε, d = Σx + ε: dx_i = g_i/d − ⟨g, x⟩/d².
    const acc_t denominator = sum_row(map, n) + eps;
    const acc_t grad_sum = dot(grad, map, n) / (denominator * denominator);
    for (int64_t i = 0; i < n; ++i) {
      grad[i] = grad[i] / denominator - grad_sum;
    }
  }
}

// ---- the kernel ----------------------------------------------------------------------------

template <typename acc_t>
struct Workspace {
  Workspace(const MapShape& shape, int64_t resize_scratch)
      : a_row(shape.plane()),
        g_row(shape.plane()),
        out_row(std::max(shape.plane(), shape.out_plane())),
        rectified(shape.plane()),
        map(shape.out_plane()),
        map_grad(shape.out_plane()),
        shifted(shape.out_plane()),
        resize(resize_scratch) {}

  std::vector<acc_t> a_row;      // a channel of A as acc_t
  std::vector<acc_t> g_row;      // a channel of G as acc_t
  std::vector<acc_t> out_row;    // a row on its way to a scalar_t output
  std::vector<acc_t> rectified;  // ReLU(raw)
  std::vector<acc_t> map;        // the resized map before normalisation
  std::vector<acc_t> map_grad;   // ∂L/∂map
  std::vector<acc_t> shifted;    // scratch of the normalisation's backward
  std::vector<acc_t> resize;     // scratch of the resize
};

template <typename scalar_t>
class GradcamKernel {
  using acc_t = acc_type<scalar_t>;

 public:
  // raw [B, H, W] and alpha ([B, K] for "mean") are acc_t: written by the forward's gather,
  // read by the backward.
  GradcamKernel(const MapShape& shape, Weighting weighting, bool relu, Normalization normalize,
                const at::Tensor& activations, const at::Tensor& gradients, const at::Tensor& raw,
                const at::Tensor& alpha)
      : shape_(shape),
        weighting_(weighting),
        relu_(relu),
        normalize_(normalize),
        resize_(shape.height, shape.width, shape.out_height, shape.out_width),
        activations_(activations.const_data_ptr<scalar_t>()),
        gradients_(gradients.const_data_ptr<scalar_t>()),
        raw_(raw.mutable_data_ptr<acc_t>()),
        alpha_(alpha.mutable_data_ptr<acc_t>()) {}

  Workspace<acc_t> workspace() const { return Workspace<acc_t>(shape_, resize_.scratch_size()); }

  const acc_t* raw(int64_t b) const { return raw_ + b * shape_.plane(); }

  // partial[plane] += the raw map of map b over channels [k_begin, k_end); "mean" stores α.
  void gather(int64_t b, int64_t k_begin, int64_t k_end, acc_t* partial,
              Workspace<acc_t>& ws) const {
    const int64_t plane = shape_.plane();
    for (int64_t k = k_begin; k < k_end; ++k) {
      const acc_t* a = read_row(channel(activations_, b, k), plane, ws.a_row.data());
      const acc_t* g = read_row(channel(gradients_, b, k), plane, ws.g_row.data());
      if (weighting_ == Weighting::kMean) {
        const acc_t alpha = sum_row(g, plane) / static_cast<acc_t>(plane);
        alpha_[b * shape_.channels + k] = alpha;
        axpy(alpha, a, partial, plane);
      } else {
        add_product(g, a, partial, plane);
      }
    }
  }

  // The raw map of map b, the sum of its partials: the first chunk's is raw_b itself.
  acc_t* partial_raw(int64_t b, int64_t chunk, acc_t* extra_partials, int64_t chunks) const {
    acc_t* raw_b = raw_ + b * shape_.plane();
    return chunk == 0 ? raw_b : extra_partials + (b * (chunks - 1) + chunk - 1) * shape_.plane();
  }

  // out[out_plane] = normalize(resize(ReLU(raw_b))).
  void finish_map(int64_t b, acc_t* out, Workspace<acc_t>& ws) const {
    resized_map(raw(b), out, ws);
    normalize_map(normalize_, out, shape_.out_plane());
  }

  // draw[plane] = ∂L/∂raw_b from grad_out[out_plane] = ∂L/∂out; recomputes the forward map.
  void map_backward(int64_t b, const acc_t* grad_out, acc_t* draw, Workspace<acc_t>& ws) const {
    const int64_t plane = shape_.plane();
    const acc_t* raw_b = raw(b);
    acc_t* map_grad = ws.map_grad.data();
    std::copy(grad_out, grad_out + shape_.out_plane(), map_grad);
    if (normalize_ != Normalization::kNone) {
      resized_map(raw_b, ws.map.data(), ws);
      normalize_map_backward(normalize_, ws.map.data(), map_grad, ws.shifted.data(),
                             shape_.out_plane());
    }
    if (shape_.resized()) {
      resize_.transpose(map_grad, draw, ws.resize.data());
    } else {
      std::copy(map_grad, map_grad + plane, draw);
    }
    if (relu_) {
      for (int64_t i = 0; i < plane; ++i) {
        draw[i] = raw_b[i] > acc_t(0) ? draw[i] : acc_t(0);
      }
    }
  }

  // dA and dG of map b over channels [k_begin, k_end) from draw = ∂L/∂raw_b, each skipped
  // where its output is null; for "mean", grad_g holds one value per channel, [B, K].
  void channel_grads(int64_t b, int64_t k_begin, int64_t k_end, const acc_t* draw,
                     scalar_t* grad_a, scalar_t* grad_g, Workspace<acc_t>& ws) const {
    const int64_t plane = shape_.plane();
    acc_t* out = ws.out_row.data();
    for (int64_t k = k_begin; k < k_end; ++k) {
      const int64_t item = b * shape_.channels + k;
      if (weighting_ == Weighting::kMean) {
        if (grad_a != nullptr) {
          write_row(grad_a + item * plane, plane, out,
                    [&](acc_t* dst) { scale_row(alpha_[item], draw, dst, plane); });
        }
        if (grad_g != nullptr) {
          const acc_t* a = read_row(channel(activations_, b, k), plane, ws.a_row.data());
          grad_g[item] = static_cast<scalar_t>(dot(draw, a, plane) / static_cast<acc_t>(plane));
        }
      } else {
        if (grad_a != nullptr) {
          const acc_t* g = read_row(channel(gradients_, b, k), plane, ws.g_row.data());
          write_row(grad_a + item * plane, plane, out,
                    [&](acc_t* dst) { multiply_rows(g, draw, dst, plane); });
        }
        if (grad_g != nullptr) {
          const acc_t* a = read_row(channel(activations_, b, k), plane, ws.a_row.data());
          write_row(grad_g + item * plane, plane, out,
                    [&](acc_t* dst) { multiply_rows(a, draw, dst, plane); });
        }
      }
    }
  }

 private:
  const scalar_t* channel(const scalar_t* data, int64_t b, int64_t k) const {
    return data + (b * shape_.channels + k) * shape_.plane();
  }

  // map[out_plane] = resize(ReLU(raw)), before normalisation.
  void resized_map(const acc_t* raw, acc_t* map, Workspace<acc_t>& ws) const {
    const int64_t plane = shape_.plane();
    const acc_t* rectified = raw;
    if (relu_) {
      for (int64_t i = 0; i < plane; ++i) {
        ws.rectified[i] = raw[i] > acc_t(0) ? raw[i] : acc_t(0);
      }
      rectified = ws.rectified.data();
    }
    if (shape_.resized()) {
      resize_.apply(rectified, map, ws.resize.data());
    } else {
      std::copy(rectified, rectified + plane, map);
    }
  }

  MapShape shape_;
  Weighting weighting_;
  bool relu_;
  Normalization normalize_;
  BilinearResize<acc_t> resize_;
  const scalar_t* activations_;
  const scalar_t* gradients_;
  acc_t* raw_;    // [B, H·W]
  acc_t* alpha_;  // [B, K] ("mean"), else empty
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradcam_fwd_cpu(
    const at::Tensor& activations, const at::Tensor& gradients, const std::string& weighting,
    bool relu, const std::string& normalize, at::IntArrayRef output_size) {
  const MapShape shape = gradcam::map_shape(kOp, activations, gradients, output_size);
  const Weighting mode = gradcam::parse_weighting(kOp, weighting);
  const Normalization norm = gradcam::parse_normalization(kOp, normalize);
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  const auto acc_options = a.options().dtype(accumulation_dtype(a));
  at::Tensor out = at::empty({shape.maps, shape.out_height, shape.out_width}, a.options());
  at::Tensor raw = at::zeros({shape.maps, shape.height, shape.width}, acc_options);
  at::Tensor alpha =
      at::empty({shape.maps, mode == Weighting::kMean ? shape.channels : 0}, acc_options);
  if (out.numel() == 0) {
    return {out, raw, alpha};
  }
  const int64_t chunks = channel_chunks(shape.maps, shape.channels);
  at::Tensor extra_partials = at::zeros({shape.maps, chunks - 1, shape.plane()}, acc_options);
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const GradcamKernel<scalar_t> kernel(shape, mode, relu, norm, a, g, raw, alpha);
    acc_t* extra = extra_partials.mutable_data_ptr<acc_t>();
    scalar_t* result = out.mutable_data_ptr<scalar_t>();
    auto workspace = [&] { return kernel.workspace(); };
    for_each_chunk(shape.maps, shape.channels, chunks, workspace,
                        [&](int64_t b, int64_t chunk, int64_t k0, int64_t k1, auto& ws) {
                          kernel.gather(b, k0, k1, kernel.partial_raw(b, chunk, extra, chunks), ws);
                        });
    for_each_map(shape.maps, workspace, [&](int64_t b, Workspace<acc_t>& ws) {
      acc_t* raw_b = kernel.partial_raw(b, 0, extra, chunks);
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        axpy(acc_t(1), kernel.partial_raw(b, chunk, extra, chunks), raw_b, shape.plane());
      }
      write_row(result + b * shape.out_plane(), shape.out_plane(), ws.out_row.data(),
                     [&](acc_t* dst) { kernel.finish_map(b, dst, ws); });
    });
  });
  return {out, raw, alpha};
}

std::tuple<at::Tensor, at::Tensor> gradcam_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& raw, const at::Tensor& alpha, const std::string& weighting, bool relu,
    const std::string& normalize, at::IntArrayRef output_size,
    const c10::List<bool>& output_mask) {
  const MapShape shape = gradcam::map_shape(kOp, activations, gradients, output_size);
  const auto [want_a, want_g] =
      checked_output_mask<2>(output_mask, kBwd, "activations, gradients");
  const Weighting mode = gradcam::parse_weighting(kOp, weighting);
  const Normalization norm = gradcam::parse_normalization(kOp, normalize);
  const auto acc = accumulation_dtype(activations);
  gradcam::check_saved_state(kOp, shape, mode, grad, raw, alpha, acc);
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  const at::Tensor upstream = grad.to(a.scalar_type()).contiguous();
  const at::Tensor raw_data = raw.contiguous();
  const at::Tensor alpha_data = alpha.contiguous();
  auto [grad_a, grad_g] = gradcam::backward_outputs(a, g, shape, mode, want_a, want_g);
  if (a.numel() == 0 || !(want_a || want_g)) {
    return {grad_a, grad_g};
  }
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const GradcamKernel<scalar_t> kernel(shape, mode, relu, norm, a, g, raw_data, alpha_data);
    const scalar_t* upstream_data = upstream.const_data_ptr<scalar_t>();
    scalar_t* da = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dg = want_g ? grad_g.mutable_data_ptr<scalar_t>() : nullptr;
    at::Tensor draw_all = at::empty({shape.maps, shape.plane()}, a.options().dtype(acc));
    acc_t* draw = draw_all.mutable_data_ptr<acc_t>();
    auto workspace = [&] { return kernel.workspace(); };
    for_each_map(shape.maps, workspace, [&](int64_t b, Workspace<acc_t>& ws) {
      const int64_t out_plane = shape.out_plane();
      const acc_t* upstream_b =
          read_row(upstream_data + b * out_plane, out_plane, ws.out_row.data());
      kernel.map_backward(b, upstream_b, draw + b * shape.plane(), ws);
    });
    for_each_chunk(shape.maps, shape.channels, channel_chunks(shape.maps, shape.channels),
                        workspace, [&](int64_t b, int64_t, int64_t k0, int64_t k1, auto& ws) {
                          kernel.channel_grads(b, k0, k1, draw + b * shape.plane(), da, dg, ws);
                        });
  });
  return {grad_a, grad_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("gradcam_fwd", &gradcam_fwd_cpu);
  m.impl("gradcam_bwd", &gradcam_bwd_cpu);
}

}  // namespace amc_kernels::cpu
