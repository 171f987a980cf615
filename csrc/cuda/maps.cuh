// Device code shared by the map kernels (gradcam, class_activation_map, saliency_mask, cgc_loss).
// - Bilinear taps (align_corners=False) from math.h's linear_tap, with BilinearResize's rule of
//   csrc/cpu/map_utils_cpu.h: a tap whose two sources coincide copies its source, weights (1, 0).
//   Resampler evaluates one output pixel in the CPU's separable order: each of the two source
//   rows along the width, then the two results along the height.
// - tap_window: the output indices whose taps can touch an input index (a superset), for
//   gathers that transpose a resize without atomics.
// - Per-map statistics over tiles of kMapTile pixels: map_stats_kernel writes (min, max, sum)
//   per (map, tile); reduce_map_stats merges one map's tiles in a fixed order (deterministic).
// - The channel reductions of gradcam and class_activation_map: channel_sum_kernel
//   (Σ_k w_bk·A_bk over a chunk of channels, one thread per kVec pixels) and row_grads_kernel
//   (one warp per (map, channel) row: w_bk·d_b and ⟨d_b, A_bk⟩).
// Accumulation: the caller's acc_t (fp32; fp64 for fp64 inputs).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "amc_kernels/math.h"
#include "common.cuh"

namespace amc_kernels::cuda {

constexpr int kMapThreads = 256;
constexpr int64_t kMapTile = 4096;  // pixels per (map, tile) block; a multiple of 256 · 16
constexpr int kRowsPerBlock = kMapThreads / kWarpSize;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cap their grids here

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of kMapThreads for a grid-stride loop over n items.
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n, kMapThreads), 1, kMaxBlocks));
}

inline int multiprocessors() {
  int device = 0;
  int count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// ---- vector loads --------------------------------------------------------------------------

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& pack) {
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// 16 bytes of scalar_t per load when every row of `plane` elements is 16-byte aligned, else 1.
template <typename scalar_t>
int vector_width(int64_t plane, std::initializer_list<const void*> pointers) {
  constexpr int wide = 16 / sizeof(scalar_t);
  bool aligned = plane % wide == 0;
  for (const void* p : pointers) {
    aligned = aligned && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  }
  return aligned ? wide : 1;
}

// ---- bilinear taps -------------------------------------------------------------------------

template <typename acc_t>
__device__ __forceinline__ LinearTap<acc_t> resize_tap(int64_t dst, int64_t in, int64_t out) {
  LinearTap<acc_t> tap = linear_tap<acc_t>(dst, in, out);
  if (tap.i0 == tap.i1) {
    tap.w0 = acc_t(1);
    tap.w1 = acc_t(0);
  }
  return tap;
}

struct Window {
  int64_t begin;
  int64_t end;
};

// Output indices d of a resize in → out whose taps can read input m: the source coordinate of
// d lies in [m − 1, m + 1) (any coordinate above in − 1 reads in − 1, any below 0 reads 0 and
// 1), widened by one index each side against rounding.
__host__ __device__ inline Window tap_window(int64_t m, int64_t in, int64_t out) {
  const double ratio = static_cast<double>(out) / static_cast<double>(in);
  const int64_t lo = static_cast<int64_t>(std::floor((m - 0.5) * ratio - 0.5)) - 1;
  const int64_t hi = static_cast<int64_t>(std::ceil((m + 1.5) * ratio - 0.5)) + 2;
  return {m <= 1 ? 0 : std::max<int64_t>(lo, 0), m >= in - 1 ? out : std::min(hi, out)};
}

// Weight of input m in output tap `tap`: w0 and w1 added in the CPU's order.
template <typename acc_t>
__device__ __forceinline__ acc_t tap_weight(const LinearTap<acc_t>& tap, int64_t m) {
  return (tap.i0 == m ? tap.w0 : acc_t(0)) + (tap.i1 == m ? tap.w1 : acc_t(0));
}

// a·wa + b·wb rounded after each operation, never contracted to an FMA: every kernel that
// recomputes a resized pixel gets the same bits (the statistics, the ties of the backward) and
// the CPU kernel's (x86 without FMA).
__device__ __forceinline__ float blend(float a, float wa, float b, float wb) {
  return __fadd_rn(__fmul_rn(a, wa), __fmul_rn(b, wb));
}

__device__ __forceinline__ double blend(double a, double wa, double b, double wb) {
  return __dadd_rn(__dmul_rn(a, wa), __dmul_rn(b, wb));
}

// One map resized from in_h×in_w to out_h×out_w, its sources optionally ReLU'd first.
template <typename acc_t>
struct Resampler {
  int64_t in_h;
  int64_t in_w;
  int64_t out_h;
  int64_t out_w;
  bool relu;

  __host__ __device__ int64_t in_plane() const { return in_h * in_w; }
  __host__ __device__ int64_t out_plane() const { return out_h * out_w; }
  __host__ __device__ bool resized() const { return in_h != out_h || in_w != out_w; }

  template <typename src_t>
  __device__ __forceinline__ acc_t source(const src_t* plane, int64_t r, int64_t c) const {
    const acc_t v = static_cast<acc_t>(plane[r * in_w + c]);
    return relu && !(v > acc_t(0)) ? acc_t(0) : v;
  }

  // The output pixel `index` (flat) of the map at `plane`.
  template <typename src_t>
  __device__ __forceinline__ acc_t value(const src_t* plane, int64_t index) const {
    const int64_t y = index / out_w;
    const int64_t x = index - y * out_w;
    if (!resized()) {
      return source(plane, y, x);
    }
    const LinearTap<acc_t> row = resize_tap<acc_t>(y, in_h, out_h);
    const LinearTap<acc_t> col = resize_tap<acc_t>(x, in_w, out_w);
    const acc_t top =
        blend(source(plane, row.i0, col.i0), col.w0, source(plane, row.i0, col.i1), col.w1);
    const acc_t bottom =
        blend(source(plane, row.i1, col.i0), col.w0, source(plane, row.i1, col.i1), col.w1);
    return blend(top, row.w0, bottom, row.w1);
  }
};

// ---- per-map statistics --------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T block_reduce_min(T value) {
  return block_reduce(value, std::numeric_limits<T>::infinity(), [](T v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const T other = __shfl_xor_sync(kFullMask, v, offset);
      v = other < v ? other : v;
    }
    return v;
  });
}

template <typename acc_t>
struct MapStats {
  acc_t lo;
  acc_t hi;
  acc_t sum;
};

constexpr int kStatFields = 3;  // (min, max, sum) per (map, tile)

// Grid: maps·tiles blocks of kMapThreads; block (b, t) reduces pixels [t·kMapTile, …) of the
// resized map b and writes partials[(b·tiles + t)·3 …] = (min, max, sum).
template <typename src_t, typename acc_t>
__global__ void map_stats_kernel(const src_t* __restrict__ maps, Resampler<acc_t> resample,
                                 acc_t* __restrict__ partials, int64_t tiles) {
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  const src_t* map = maps + b * resample.in_plane();
  const int64_t end = std::min((t + 1) * kMapTile, resample.out_plane());
  acc_t lo = std::numeric_limits<acc_t>::infinity();
  acc_t hi = -lo;
  acc_t sum = 0;
  for (int64_t i = t * kMapTile + threadIdx.x; i < end; i += blockDim.x) {
    const acc_t v = resample.value(map, i);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    sum += v;
  }
  lo = block_reduce_min(lo);
  hi = block_reduce_max(hi);
  sum = block_reduce_sum(sum);
  if (threadIdx.x == 0) {
    acc_t* out = partials + blockIdx.x * kStatFields;
    out[0] = lo;
    out[1] = hi;
    out[2] = sum;
  }
}

// The statistics of map b from its tiles' partials; every thread of the block gets them.
template <typename acc_t>
__device__ MapStats<acc_t> reduce_map_stats(const acc_t* partials, int64_t b, int64_t tiles) {
  acc_t lo = std::numeric_limits<acc_t>::infinity();
  acc_t hi = -lo;
  acc_t sum = 0;
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) {
    const acc_t* p = partials + (b * tiles + t) * kStatFields;
    lo = p[0] < lo ? p[0] : lo;
    hi = p[1] > hi ? p[1] : hi;
    sum += p[2];
  }
  return {block_reduce_min(lo), block_reduce_max(hi), block_reduce_sum(sum)};
}

template <typename src_t, typename acc_t>
void launch_map_stats(const src_t* maps, const Resampler<acc_t>& resample, int64_t count,
                      int64_t tiles, acc_t* partials, cudaStream_t stream) {
  map_stats_kernel<<<static_cast<unsigned>(count * tiles), kMapThreads, 0, stream>>>(
      maps, resample, partials, tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- channel reductions (gradcam, class_activation_map) -------------------------------------

// w_bk = data[row_b·stride + k], row_b = rows[b] (the target class) or b itself.
template <typename weight_t>
struct ChannelWeights {
  const weight_t* data;
  const int64_t* rows;
  int64_t stride;
  int64_t limit;  // rows must lie in [0, limit)

  template <typename acc_t>
  __device__ __forceinline__ acc_t at(int64_t b, int64_t k) const {
    const int64_t row = rows != nullptr ? rows[b] : b;
    CUDA_KERNEL_ASSERT(row >= 0 && row < limit);
    return static_cast<acc_t>(data[row * stride + k]);
  }

  // sum += w_bk·a, elementwise (the CPU's axpy).
  template <int kVec, typename scalar_t, typename acc_t>
  __device__ __forceinline__ void accumulate(int64_t b, int64_t k, int64_t, const Pack<scalar_t, kVec>& a,
                                             acc_t* sum) const {
    const acc_t w = at<acc_t>(b, k);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      sum[i] += w * static_cast<acc_t>(a.v[i]);
    }
  }
};

// w_bkp = G_bkp: sum += G ⊙ A (the CPU's add_product).
template <typename scalar_t>
struct ElementwiseWeights {
  const scalar_t* g;

  template <int kVec, typename acc_t>
  __device__ __forceinline__ void accumulate(int64_t, int64_t, int64_t offset,
                                             const Pack<scalar_t, kVec>& a, acc_t* sum) const {
    const Pack<scalar_t, kVec> w = load_pack<kVec>(g + offset);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      sum[i] += static_cast<acc_t>(w.v[i]) * static_cast<acc_t>(a.v[i]);
    }
  }
};

// Channel chunks (grid y) so that maps × pixel groups × chunks fills the GPU twice over; each
// chunk keeps at least 16 channels, as the CPU's.
inline int64_t channel_chunks(int64_t maps, int64_t channels, int64_t plane, int vec) {
  const int64_t blocks = ceil_div(maps * (plane / vec), kMapThreads);
  const int64_t wanted = ceil_div(2 * multiprocessors(), std::max<int64_t>(blocks, 1));
  return std::clamp<int64_t>(std::min(wanted, channels / 16), 1, 65535);
}

// Grid: (grid-stride over maps × plane/kVec pixel groups, chunks). Chunk c sums channels
// [c·K/C, (c+1)·K/C) of map b in order into first[b] (c = 0) or extra[b, c − 1].
template <int kVec, typename scalar_t, typename acc_t, typename Weights>
__global__ void channel_sum_kernel(const scalar_t* __restrict__ a, Weights weights,
                                   acc_t* __restrict__ first, acc_t* __restrict__ extra,
                                   int64_t maps, int64_t channels, int64_t plane) {
  const int64_t chunks = gridDim.y;
  const int64_t chunk = blockIdx.y;
  const int64_t k_begin = chunk * channels / chunks;
  const int64_t k_end = (chunk + 1) * channels / chunks;
  const int64_t groups = plane / kVec;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       item < maps * groups; item += stride) {
    const int64_t b = item / groups;
    const int64_t p = (item - b * groups) * kVec;
    acc_t sum[kVec] = {};
#pragma unroll 4
    for (int64_t k = k_begin; k < k_end; ++k) {
      const int64_t offset = (b * channels + k) * plane + p;
      weights.template accumulate<kVec>(b, k, offset, load_pack<kVec>(a + offset), sum);
    }
    acc_t* out = chunk == 0 ? first + b * plane : extra + (b * (chunks - 1) + chunk - 1) * plane;
    Pack<acc_t, kVec> result;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      result.v[i] = sum[i];
    }
    store_pack<kVec>(out + p, result);
  }
}

// out[b, p] = (first[b, p] + Σ_c extra[b, c, p]) / divisor, chunks in order; out may be first.
template <typename out_t, typename acc_t>
__global__ void combine_chunks_kernel(const acc_t* first, const acc_t* __restrict__ extra,
                                      out_t* out, int64_t maps, int64_t plane, int64_t chunks,
                                      acc_t divisor) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < maps * plane;
       i += stride) {
    const int64_t b = i / plane;
    const int64_t p = i - b * plane;
    acc_t total = first[i];
    for (int64_t c = 1; c < chunks; ++c) {
      total += extra[(b * (chunks - 1) + c - 1) * plane + p];
    }
    out[i] = static_cast<out_t>(total / divisor);
  }
}

// dst[b, p] = Σ_k w_bk·A_bk[p] over all channels, into first (+ extra partials when split),
// then combined into out (divided by `divisor`). Reads A once.
template <typename scalar_t, typename acc_t, typename out_t, typename Weights>
void channel_sum(const scalar_t* a, Weights weights, int vec, int64_t maps, int64_t channels,
                 int64_t plane, acc_t* first, acc_t* extra_storage, int64_t chunks, out_t* out,
                 acc_t divisor, cudaStream_t stream) {
  const int64_t groups = maps * (plane / vec);
  const dim3 grid(grid_for(groups), static_cast<unsigned>(chunks));
  constexpr int wide = 16 / sizeof(scalar_t);
  if (vec == wide) {
    channel_sum_kernel<wide><<<grid, kMapThreads, 0, stream>>>(a, weights, first, extra_storage,
                                                               maps, channels, plane);
  } else {
    channel_sum_kernel<1><<<grid, kMapThreads, 0, stream>>>(a, weights, first, extra_storage,
                                                            maps, channels, plane);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (chunks > 1 || static_cast<const void*>(out) != static_cast<const void*>(first)) {
    combine_chunks_kernel<<<grid_for(maps * plane), kMapThreads, 0, stream>>>(
        first, extra_storage, out, maps, plane, chunks, divisor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// One warp per row (b, k) of A [B·K, plane], d [B, plane] in acc_t: grad_a row = w_bk·d_b
// (if grad_a) and dots[b·K + k] = ⟨d_b, A_bk⟩ / divisor (if dots; reads A only then).
template <int kVec, typename scalar_t, typename acc_t, typename dot_t, typename Weights>
__global__ void row_grads_kernel(const scalar_t* __restrict__ a, const acc_t* __restrict__ d,
                                 Weights weights, scalar_t* __restrict__ grad_a,
                                 dot_t* __restrict__ dots, acc_t divisor, int64_t rows,
                                 int64_t channels, int64_t plane) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarpSize;
       row < rows; row += warps) {
    const int64_t b = row / channels;
    const int64_t k = row - b * channels;
    const acc_t w = grad_a != nullptr ? weights.template at<acc_t>(b, k) : acc_t(0);
    const acc_t* d_b = d + b * plane;
    acc_t dot = 0;
    for (int64_t p = lane * kVec; p < plane; p += kWarpSize * kVec) {
      const Pack<acc_t, kVec> dv = load_pack<kVec>(d_b + p);
      if (dots != nullptr) {
        const Pack<scalar_t, kVec> av = load_pack<kVec>(a + row * plane + p);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          dot += dv.v[i] * static_cast<acc_t>(av.v[i]);
        }
      }
      if (grad_a != nullptr) {
        Pack<scalar_t, kVec> out;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          out.v[i] = static_cast<scalar_t>(w * dv.v[i]);
        }
        store_pack<kVec>(grad_a + row * plane + p, out);
      }
    }
    dot = warp_reduce_sum(dot);
    if (dots != nullptr && lane == 0) {
      dots[row] = static_cast<dot_t>(dot / divisor);
    }
  }
}

template <typename scalar_t, typename acc_t, typename dot_t, typename Weights>
void row_grads(const scalar_t* a, const acc_t* d, Weights weights, scalar_t* grad_a, dot_t* dots,
               acc_t divisor, int vec, int64_t rows, int64_t channels, int64_t plane,
               cudaStream_t stream) {
  const auto blocks =
      static_cast<unsigned>(std::clamp<int64_t>(ceil_div(rows, kRowsPerBlock), 1, kMaxBlocks));
  constexpr int wide = 16 / sizeof(scalar_t);
  if (vec == wide) {
    row_grads_kernel<wide><<<blocks, kMapThreads, 0, stream>>>(a, d, weights, grad_a, dots,
                                                               divisor, rows, channels, plane);
  } else {
    row_grads_kernel<1><<<blocks, kMapThreads, 0, stream>>>(a, d, weights, grad_a, dots, divisor,
                                                            rows, channels, plane);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace amc_kernels::cuda
