// gradcam_fwd and gradcam_bwd on CUDA (docs/design.md#24-gradcam); the semantics and the saved
// state of csrc/cpu/gradcam_cpu.cpp.
// Formula: raw_b = Σ_k α_bk·A_bk with α_bk = mean_hw G_bk ("mean"), or Σ_k G_bk ⊙ A_bk
// ("elementwise"); m_b = resize(ReLU(raw_b)) (bilinear, align_corners=False, maps.cuh's
// Resampler); out = normalize(m): "max" m/(max+ε), "minmax" (m−min)/((max−min)+ε), "sum"
// m/(Σm+ε)+ε, ε = map_eps. The forward returns (out, raw [B,H,W], α [B,K] or [B,0]).
// Backward from dOut: dm through the normalisation (amax/amin split their gradient evenly among
// ties, as torch), dRaw = resizeᵀ(dm) masked by raw > 0 (if relu), then
//   mean:        dA_bk = α_bk·dRaw_b, dG_bk = ⟨dRaw_b, A_bk⟩/(H·W), returned as [B, K, 1, 1];
//   elementwise: dA = G ⊙ dRaw, dG = A ⊙ dRaw.
// Grid mapping:
//   forward: α: one warp per (b, k) row of G; raw: channel_sum_kernel, one thread per 16 bytes
//   of pixels, grid y = channel chunks (partials summed in chunk order); statistics: one block
//   per (map, 4096-pixel tile); maps: one block per (map, tile), which merges its map's tile
//   statistics in a fixed order. Reads G once and A once.
//   backward: statistics as above; the normalisation's gradient statistics per (map, tile); dm
//   per pixel; resizeᵀ as two gathers (rows, then columns) over tap_window, no atomics; then
//   "mean": one warp per (b, k) row (dA and dG together, A read once, only for dG);
//   "elementwise": one thread per 16 bytes of (b, k, pixel).
// Deterministic: no atomics; every sum has a fixed order.
// Accumulation: acc_type (fp32; fp64 for fp64 inputs).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_gradcam.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "maps.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kOp = "gradcam";
constexpr const char* kBwd = "gradcam_bwd";

using gradcam::Normalization;
using gradcam::Weighting;

struct MapShape : gradcam::MapShape {
  int64_t tiles() const { return ceil_div(out_plane(), kMapTile); }

  template <typename acc_t>
  Resampler<acc_t> resampler(bool relu) const {
    return {height, width, out_height, out_width, relu};
  }
};

MapShape map_shape(const at::Tensor& activations, const at::Tensor& gradients,
                   at::IntArrayRef output_size) {
  return {gradcam::map_shape(kOp, activations, gradients, output_size, /*same_device=*/true)};
}

// ---- forward -------------------------------------------------------------------------------

// One warp per row (b, k): alpha[row] = Σ_p G[row, p] / plane.
template <int kVec, typename scalar_t, typename acc_t>
__global__ void channel_mean_kernel(const scalar_t* __restrict__ g, acc_t* __restrict__ alpha,
                                    int64_t rows, int64_t plane) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarpSize;
       row < rows; row += warps) {
    acc_t sum = 0;
    for (int64_t p = lane * kVec; p < plane; p += kWarpSize * kVec) {
      const Pack<scalar_t, kVec> v = load_pack<kVec>(g + row * plane + p);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        sum += static_cast<acc_t>(v.v[i]);
      }
    }
    sum = warp_reduce_sum(sum);
    if (lane == 0) {
      alpha[row] = sum / static_cast<acc_t>(plane);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t normalized(Normalization mode, acc_t m,
                                            const MapStats<acc_t>& s) {
  const acc_t eps = map_eps<acc_t>();
  switch (mode) {
    case Normalization::kMax:
      return m / (s.hi + eps);
    case Normalization::kMinMax:
      return minmax_normalized(m, s.lo, s.hi);
    case Normalization::kSum:
      return m / (s.sum + eps) + eps;
    default:
      return m;
  }
}

// Block (b, t) writes out[b, tile t] = normalize(m_b) for its pixels.
template <typename scalar_t, typename acc_t>
__global__ void write_maps_kernel(const acc_t* __restrict__ raw, Resampler<acc_t> resample,
                                  Normalization mode, const acc_t* __restrict__ stats,
                                  scalar_t* __restrict__ out, int64_t tiles) {
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  MapStats<acc_t> s{0, 0, 0};
  if (mode != Normalization::kNone) {
    s = reduce_map_stats(stats, b, tiles);
  }
  const acc_t* map = raw + b * resample.in_plane();
  scalar_t* out_b = out + b * resample.out_plane();
  const int64_t end = std::min((t + 1) * kMapTile, resample.out_plane());
  for (int64_t i = t * kMapTile + threadIdx.x; i < end; i += blockDim.x) {
    out_b[i] = static_cast<scalar_t>(normalized(mode, resample.value(map, i), s));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradcam_fwd_cuda(
    const at::Tensor& activations, const at::Tensor& gradients, const std::string& weighting,
    bool relu, const std::string& normalize, at::IntArrayRef output_size) {
  const MapShape shape = map_shape(activations, gradients, output_size);
  const Weighting mode = gradcam::parse_weighting(kOp, weighting);
  const Normalization norm = gradcam::parse_normalization(kOp, normalize);
  const c10::cuda::CUDAGuard guard(activations.device());
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t plane = shape.plane();
    const int64_t rows = shape.maps * shape.channels;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    acc_t* raw_data = raw.mutable_data_ptr<acc_t>();
    const int vec = vector_width<scalar_t>(plane, {a_data, g_data});
    const int64_t chunks = channel_chunks(shape.maps, shape.channels, plane, vec);
    at::Tensor extra = at::empty({shape.maps, chunks - 1, plane}, acc_options);
    acc_t* extra_data = extra.mutable_data_ptr<acc_t>();
    if (rows > 0 && plane > 0) {
      if (mode == Weighting::kMean) {
        acc_t* alpha_data = alpha.mutable_data_ptr<acc_t>();
        const auto blocks = static_cast<unsigned>(
            std::clamp<int64_t>(ceil_div(rows, kRowsPerBlock), 1, kMaxBlocks));
        if (vec == 1) {
          channel_mean_kernel<1><<<blocks, kMapThreads, 0, stream>>>(g_data, alpha_data, rows,
                                                                     plane);
        } else {
          channel_mean_kernel<16 / sizeof(scalar_t)>
              <<<blocks, kMapThreads, 0, stream>>>(g_data, alpha_data, rows, plane);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const ChannelWeights<acc_t> weights{alpha_data, nullptr, shape.channels, shape.maps};
        channel_sum(a_data, weights, vec, shape.maps, shape.channels, plane, raw_data, extra_data,
                    chunks, raw_data, acc_t(1), stream);
      } else {
        const ElementwiseWeights<scalar_t> weights{g_data};
        channel_sum(a_data, weights, vec, shape.maps, shape.channels, plane, raw_data, extra_data,
                    chunks, raw_data, acc_t(1), stream);
      }
    }
    const Resampler<acc_t> resample = shape.resampler<acc_t>(relu);
    const int64_t tiles = shape.tiles();
    at::Tensor stats = at::empty({norm == Normalization::kNone ? 0 : shape.maps * tiles * kStatFields},
                                 acc_options);
    if (norm != Normalization::kNone) {
      launch_map_stats(raw_data, resample, shape.maps, tiles, stats.mutable_data_ptr<acc_t>(),
                       stream);
    }
    write_maps_kernel<<<static_cast<unsigned>(shape.maps * tiles), kMapThreads, 0, stream>>>(
        raw_data, resample, norm, stats.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>(), tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, raw, alpha};
}

// ---- backward: the map ---------------------------------------------------------------------

// Per (map, tile) partials of the normalisation's backward, from g = dOut and m:
//   [0] ⟨g, m⟩ ("max", "sum") or ⟨g, m − min⟩ ("minmax");
//   [1] Σ g/d ("minmax", d = (max − min) + ε);
//   [2] #{m = max} ("max") or #{m − min = max − min} ("minmax");
//   [3] #{m = min} ("minmax").
constexpr int kGradFields = 4;

template <typename scalar_t, typename acc_t>
__global__ void grad_stats_kernel(const acc_t* __restrict__ raw, const scalar_t* __restrict__ grad,
                                  Resampler<acc_t> resample, Normalization mode,
                                  const acc_t* __restrict__ stats, acc_t* __restrict__ partials,
                                  int64_t tiles) {
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  const MapStats<acc_t> s = reduce_map_stats(stats, b, tiles);
  const acc_t range = s.hi - s.lo;
  const acc_t d = range + map_eps<acc_t>();
  const acc_t* map = raw + b * resample.in_plane();
  const scalar_t* g_b = grad + b * resample.out_plane();
  const int64_t end = std::min((t + 1) * kMapTile, resample.out_plane());
  acc_t dot = 0, scaled = 0, ties = 0, low_ties = 0;
  for (int64_t i = t * kMapTile + threadIdx.x; i < end; i += blockDim.x) {
    const acc_t m = resample.value(map, i);
    const acc_t g = static_cast<acc_t>(g_b[i]);
    if (mode == Normalization::kMinMax) {
      const acc_t shifted = m - s.lo;
      dot += g * shifted;
      scaled += g / d;
      ties += shifted == range;
      low_ties += m == s.lo;
    } else {
      dot += g * m;
      ties += m == s.hi;
    }
  }
  dot = block_reduce_sum(dot);
  scaled = block_reduce_sum(scaled);
  ties = block_reduce_sum(ties);
  low_ties = block_reduce_sum(low_ties);
  if (threadIdx.x == 0) {
    acc_t* out = partials + blockIdx.x * kGradFields;
    out[0] = dot;
    out[1] = scaled;
    out[2] = ties;
    out[3] = low_ties;
  }
}

template <typename acc_t>
__device__ void reduce_grad_stats(const acc_t* partials, int64_t b, int64_t tiles,
                                  acc_t (&total)[kGradFields]) {
  acc_t local[kGradFields] = {};
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) {
#pragma unroll
    for (int f = 0; f < kGradFields; ++f) {
      local[f] += partials[(b * tiles + t) * kGradFields + f];
    }
  }
#pragma unroll
  for (int f = 0; f < kGradFields; ++f) {
    total[f] = block_reduce_sum(local[f]);
  }
}

// Block (b, t): dm = ∂L/∂m on its pixels (the normalisation's backward of the CPU kernel). The
// result goes to dm [B, out_plane], or, without a resize, straight to draw masked by raw > 0.
template <typename scalar_t, typename acc_t>
__global__ void map_grad_kernel(const acc_t* __restrict__ raw, const scalar_t* __restrict__ grad,
                                Resampler<acc_t> resample, Normalization mode,
                                const acc_t* __restrict__ stats,
                                const acc_t* __restrict__ grad_stats, acc_t* __restrict__ dm,
                                int64_t tiles) {
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  const acc_t eps = map_eps<acc_t>();
  MapStats<acc_t> s{0, 0, 0};
  acc_t k[kGradFields] = {};
  if (mode != Normalization::kNone) {
    s = reduce_map_stats(stats, b, tiles);
    reduce_grad_stats(grad_stats, b, tiles, k);
  }
  const acc_t range = s.hi - s.lo;
  acc_t d = mode == Normalization::kMax ? s.hi + eps
                                        : (mode == Normalization::kSum ? s.sum + eps : range + eps);
  // ∂L/∂max shared among its ties, and (minmax) ∂L/∂min among the minimum's ties.
  const acc_t grad_extreme = -k[0] / (d * d);
  const acc_t high_share = grad_extreme / k[2];
  const acc_t low_share = -(k[1] + grad_extreme) / k[3];
  const acc_t grad_sum = k[0] / (d * d);
  const acc_t* map = raw + b * resample.in_plane();
  const scalar_t* g_b = grad + b * resample.out_plane();
  acc_t* dm_b = dm + b * resample.out_plane();
  const bool direct = !resample.resized();
  const int64_t end = std::min((t + 1) * kMapTile, resample.out_plane());
  for (int64_t i = t * kMapTile + threadIdx.x; i < end; i += blockDim.x) {
    const acc_t g = static_cast<acc_t>(g_b[i]);
    acc_t v = g;
    if (mode != Normalization::kNone) {
      const acc_t m = resample.value(map, i);
      if (mode == Normalization::kMax) {
        v = g * (acc_t(1) / d) + (m == s.hi ? high_share : acc_t(0));
      } else if (mode == Normalization::kMinMax) {
        v = g / d + (m - s.lo == range ? high_share : acc_t(0));
        v += m == s.lo ? low_share : acc_t(0);
      } else {
        v = g / d - grad_sum;
      }
    }
    if (direct && resample.relu && !(map[i] > acc_t(0))) {
      v = acc_t(0);
    }
    dm_b[i] = v;
  }
}

// resizeᵀ along the height: t[b, r, x] = Σ_y wy(r)·dm[b, y, x] over y ∈ tap_window(r), y in order.
template <typename acc_t>
__global__ void transpose_rows_kernel(const acc_t* __restrict__ dm, Resampler<acc_t> resample,
                                      acc_t* __restrict__ t, int64_t maps) {
  const int64_t per_map = resample.in_h * resample.out_w;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < maps * per_map;
       i += stride) {
    const int64_t b = i / per_map;
    const int64_t r = (i - b * per_map) / resample.out_w;
    const int64_t x = i - b * per_map - r * resample.out_w;
    const Window window = tap_window(r, resample.in_h, resample.out_h);
    const acc_t* column = dm + b * resample.out_plane() + x;
    acc_t total = 0;
    for (int64_t y = window.begin; y < window.end; ++y) {
      const LinearTap<acc_t> tap = resize_tap<acc_t>(y, resample.in_h, resample.out_h);
      const acc_t g = column[y * resample.out_w];
      total += tap.i0 == r ? tap.w0 * g : acc_t(0);
      total += tap.i1 == r ? tap.w1 * g : acc_t(0);
    }
    t[i] = total;
  }
}

// resizeᵀ along the width, then the ReLU's mask: draw[b, r, c] = Σ_x wx(c)·t[b, r, x].
template <typename acc_t>
__global__ void transpose_cols_kernel(const acc_t* __restrict__ t, const acc_t* __restrict__ raw,
                                      Resampler<acc_t> resample, acc_t* __restrict__ draw,
                                      int64_t maps) {
  const int64_t plane = resample.in_plane();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < maps * plane;
       i += stride) {
    const int64_t b = i / plane;
    const int64_t r = (i - b * plane) / resample.in_w;
    const int64_t c = i - b * plane - r * resample.in_w;
    const Window window = tap_window(c, resample.in_w, resample.out_w);
    const acc_t* row = t + (b * resample.in_h + r) * resample.out_w;
    acc_t total = 0;
    for (int64_t x = window.begin; x < window.end; ++x) {
      const LinearTap<acc_t> tap = resize_tap<acc_t>(x, resample.in_w, resample.out_w);
      total += tap.i0 == c ? row[x] * tap.w0 : acc_t(0);
      total += tap.i1 == c ? row[x] * tap.w1 : acc_t(0);
    }
    draw[i] = resample.relu && !(raw[i] > acc_t(0)) ? acc_t(0) : total;
  }
}

// draw [B, H·W] = ∂L/∂raw from grad [B, H'·W'].
template <typename scalar_t, typename acc_t>
void raw_gradient(const acc_t* raw, const scalar_t* grad, const MapShape& shape, bool relu,
                  Normalization norm, acc_t* draw, const at::TensorOptions& acc_options,
                  cudaStream_t stream) {
  const Resampler<acc_t> resample = shape.resampler<acc_t>(relu);
  const int64_t tiles = shape.tiles();
  const auto blocks = static_cast<unsigned>(shape.maps * tiles);
  const bool normalized = norm != Normalization::kNone;
  at::Tensor stats = at::empty({normalized ? shape.maps * tiles * kStatFields : 0}, acc_options);
  at::Tensor grad_stats =
      at::empty({normalized ? shape.maps * tiles * kGradFields : 0}, acc_options);
  if (normalized) {
    launch_map_stats(raw, resample, shape.maps, tiles, stats.mutable_data_ptr<acc_t>(), stream);
    grad_stats_kernel<<<blocks, kMapThreads, 0, stream>>>(raw, grad, resample, norm,
                                                          stats.const_data_ptr<acc_t>(),
                                                          grad_stats.mutable_data_ptr<acc_t>(),
                                                          tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const bool resized = resample.resized();
  at::Tensor dm = at::empty({resized ? shape.maps * shape.out_plane() : 0}, acc_options);
  acc_t* dm_data = resized ? dm.mutable_data_ptr<acc_t>() : draw;
  map_grad_kernel<<<blocks, kMapThreads, 0, stream>>>(raw, grad, resample, norm,
                                                      stats.const_data_ptr<acc_t>(),
                                                      grad_stats.const_data_ptr<acc_t>(), dm_data,
                                                      tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!resized) {
    return;
  }
  at::Tensor t = at::empty({shape.maps * shape.height * shape.out_width}, acc_options);
  transpose_rows_kernel<<<grid_for(t.numel()), kMapThreads, 0, stream>>>(
      dm_data, resample, t.mutable_data_ptr<acc_t>(), shape.maps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  transpose_cols_kernel<<<grid_for(shape.maps * shape.plane()), kMapThreads, 0, stream>>>(
      t.const_data_ptr<acc_t>(), raw, resample, draw, shape.maps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- backward: the channels ----------------------------------------------------------------

// "elementwise", one thread per kVec elements of (b, k, p): dA = G ⊙ dRaw_b, dG = A ⊙ dRaw_b,
// each skipped where null.
template <int kVec, typename scalar_t, typename acc_t>
__global__ void elementwise_grads_kernel(const scalar_t* __restrict__ a,
                                         const scalar_t* __restrict__ g,
                                         const acc_t* __restrict__ draw,
                                         scalar_t* __restrict__ grad_a,
                                         scalar_t* __restrict__ grad_g, int64_t total,
                                         int64_t channels, int64_t plane) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kVec;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * kVec;
       i < total; i += stride) {
    const int64_t row = i / plane;
    const int64_t p = i - row * plane;
    const Pack<acc_t, kVec> d = load_pack<kVec>(draw + (row / channels) * plane + p);
    if (grad_a != nullptr) {
      const Pack<scalar_t, kVec> gv = load_pack<kVec>(g + i);
      Pack<scalar_t, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        out.v[j] = static_cast<scalar_t>(static_cast<acc_t>(gv.v[j]) * d.v[j]);
      }
      store_pack<kVec>(grad_a + i, out);
    }
    if (grad_g != nullptr) {
      const Pack<scalar_t, kVec> av = load_pack<kVec>(a + i);
      Pack<scalar_t, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        out.v[j] = static_cast<scalar_t>(static_cast<acc_t>(av.v[j]) * d.v[j]);
      }
      store_pack<kVec>(grad_g + i, out);
    }
  }
}

template <typename scalar_t, typename acc_t>
void elementwise_grads(const scalar_t* a, const scalar_t* g, const acc_t* draw, scalar_t* grad_a,
                       scalar_t* grad_g, int vec, int64_t total, int64_t channels, int64_t plane,
                       cudaStream_t stream) {
  const unsigned blocks = grid_for(ceil_div(total, vec));
  if (vec == 1) {
    elementwise_grads_kernel<1><<<blocks, kMapThreads, 0, stream>>>(a, g, draw, grad_a, grad_g,
                                                                    total, channels, plane);
  } else {
    elementwise_grads_kernel<16 / sizeof(scalar_t)><<<blocks, kMapThreads, 0, stream>>>(
        a, g, draw, grad_a, grad_g, total, channels, plane);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> gradcam_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& raw, const at::Tensor& alpha, const std::string& weighting, bool relu,
    const std::string& normalize, at::IntArrayRef output_size,
    const c10::List<bool>& output_mask) {
  const MapShape shape = map_shape(activations, gradients, output_size);
  const auto [want_a, want_g] =
      checked_output_mask<2>(output_mask, kBwd, "activations, gradients");
  const Weighting mode = gradcam::parse_weighting(kOp, weighting);
  const Normalization norm = gradcam::parse_normalization(kOp, normalize);
  const auto acc = accumulation_dtype(activations);
  gradcam::check_saved_state(kOp, shape, mode, grad, raw, alpha, acc);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = activations.contiguous();
  const at::Tensor g = gradients.contiguous();
  const at::Tensor upstream = grad.to(a.scalar_type()).contiguous();
  const at::Tensor raw_data = raw.contiguous();
  const at::Tensor alpha_data = alpha.contiguous();
  auto [grad_a, grad_g] = gradcam::backward_outputs(a, g, shape, mode, want_a, want_g);
  if (a.numel() == 0 || !(want_a || want_g)) {
    return {grad_a, grad_g};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(a.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc_options = a.options().dtype(acc);
    const int64_t plane = shape.plane();
    at::Tensor draw = at::empty({shape.maps, plane}, acc_options);
    acc_t* draw_data = draw.mutable_data_ptr<acc_t>();
    raw_gradient(raw_data.const_data_ptr<acc_t>(), upstream.const_data_ptr<scalar_t>(), shape,
                 relu, norm, draw_data, acc_options, stream);
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const scalar_t* g_data = g.const_data_ptr<scalar_t>();
    scalar_t* da = want_a ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dg = want_g ? grad_g.mutable_data_ptr<scalar_t>() : nullptr;
    const int vec = vector_width<scalar_t>(plane, {a_data, g_data, da, dg});
    if (mode == Weighting::kMean) {
      const ChannelWeights<acc_t> weights{alpha_data.const_data_ptr<acc_t>(), nullptr,
                                          shape.channels, shape.maps};
      row_grads(a_data, draw_data, weights, da, dg, static_cast<acc_t>(plane), vec,
                shape.maps * shape.channels, shape.channels, plane, stream);
    } else {
      elementwise_grads(a_data, g_data, draw_data, da, dg, vec, a.numel(), shape.channels, plane,
                        stream);
    }
  });
  return {grad_a, grad_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("gradcam_fwd", &gradcam_fwd_cuda);
  m.impl("gradcam_bwd", &gradcam_bwd_cuda);
}

}  // namespace amc_kernels::cuda
