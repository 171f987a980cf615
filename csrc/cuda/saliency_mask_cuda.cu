// saliency_mask_fwd on CUDA (docs/design.md#27-saliency_mask); the semantics of
// csrc/cpu/saliency_mask_cpu.cpp. Not differentiable.
// Formula: s = bilinear(saliency_b → H×W) (align_corners=False, maps.cuh's Resampler, the CPU's
// evaluation order, no FMA contraction), e = (s − min s)/((max s − min s) + ε)
// (minmax_normalized, ε = map_eps), in the saliency's acc_type. keep = e > threshold (rounded to
// that dtype), or with top_fraction f the k = ⌊f·H·W + ½⌋ largest e, ties to the lower flat
// index: v = the k-th largest e, keep e > v and the first k − #{e > v} pixels with e = v.
// masked = keep ? image : fill in every channel, copied as raw bits.
// Grid mapping: one block per (image, 4096-pixel tile) throughout. (1) map_stats_kernel: min and
// max per tile. (2) top_fraction only: a radix select on the order-preserving bit keys of e,
// 8 bits per pass (4 passes for fp32, 8 for fp64): per (image, tile) 256-bin shared-memory
// histograms of the candidates (integer atomics: exact), then one block per image sums its tiles
// in order and picks the digit holding the rank; the state (key prefix, rank) stays on the
// device: no host synchronisation. (3) mask_kernel: each block merges its image's statistics,
// decides its pixels (ties ranked by the last pass's per-tile counts of earlier tiles plus a
// block scan), writes keep and copies the image, 16 bytes per thread where aligned: one pass
// over the image data. e is recomputed in each step, never stored.
// Accumulation: acc_type of the saliency (fp32; fp64 for fp64 saliency).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_saliency_mask.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "maps.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kOp = "saliency_mask";
constexpr int kBins = 256;
constexpr int kDigitBits = 8;
static_assert(kBins == kMapThreads, "one thread per histogram bin");

// ---- keys ----------------------------------------------------------------------------------

template <typename acc_t>
using key_type = std::conditional_t<std::is_same_v<acc_t, double>, uint64_t, uint32_t>;

// Unsigned keys in the order of the values: the sign bit flipped for x ≥ 0, all bits for x < 0.
__device__ __forceinline__ uint32_t ordered_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t ordered_key(double x) {
  const auto u = static_cast<uint64_t>(__double_as_longlong(x));
  return (u & 0x8000000000000000ull) != 0 ? ~u : (u | 0x8000000000000000ull);
}

// The key bits above the digit of pass `pass` (none for pass 0).
template <typename key_t>
__device__ __forceinline__ key_t high_mask(int pass) {
  constexpr int bits = 8 * sizeof(key_t);
  const int low = bits - kDigitBits * pass;
  return pass == 0 ? key_t(0) : static_cast<key_t>(~key_t(0) << low);
}

template <typename key_t>
__device__ __forceinline__ int digit_shift(int pass) {
  return 8 * static_cast<int>(sizeof(key_t)) - kDigitBits * (pass + 1);
}

// ---- the normalised saliency ---------------------------------------------------------------

template <typename sal_t, typename acc_t>
struct Saliency {
  const sal_t* maps;
  Resampler<acc_t> resample;
  const acc_t* stats;  // map_stats_kernel partials
  int64_t tiles;

  // e of pixel i of image b, given the image's statistics.
  __device__ __forceinline__ acc_t e(int64_t b, int64_t i, const MapStats<acc_t>& s) const {
    return minmax_normalized(resample.value(maps + b * resample.in_plane(), i), s.lo, s.hi);
  }
};

// Radix state per image in int64 [B, 2]: the key bits found so far and the rank still sought
// among the candidates (1-based, from the top).
constexpr int kStateFields = 2;

// Block (b, t): hist[b, t, d] = #{pixels of the tile whose key matches the state's prefix above
// the digit of this pass and whose digit is d}.
template <typename sal_t, typename acc_t>
__global__ void radix_histogram_kernel(Saliency<sal_t, acc_t> saliency,
                                       const int64_t* __restrict__ state, int pass,
                                       int* __restrict__ hist) {
  using key_t = key_type<acc_t>;
  __shared__ int bins[kBins];
  const int64_t tiles = saliency.tiles;
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  const MapStats<acc_t> s = reduce_map_stats(saliency.stats, b, tiles);
  const key_t mask = high_mask<key_t>(pass);
  const key_t prefix = pass == 0 ? key_t(0) : static_cast<key_t>(state[b * kStateFields]);
  const int shift = digit_shift<key_t>(pass);
  bins[threadIdx.x] = 0;
  __syncthreads();
  const int64_t end = std::min((t + 1) * kMapTile, saliency.resample.out_plane());
  for (int64_t i = t * kMapTile + threadIdx.x; i < end; i += blockDim.x) {
    const key_t key = ordered_key(saliency.e(b, i, s));
    if (((key ^ prefix) & mask) == 0) {
      atomicAdd(&bins[static_cast<int>((key >> shift) & (kBins - 1))], 1);
    }
  }
  __syncthreads();
  hist[blockIdx.x * kBins + threadIdx.x] = bins[threadIdx.x];
}

// Exclusive prefix sum of `value` over the block in thread order; `total` gets the block's sum.
__device__ int block_exclusive_scan(int value, int& total) {
  __shared__ int warp_totals[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  int inclusive = value;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int other = __shfl_up_sync(kFullMask, inclusive, offset);
    inclusive += lane >= offset ? other : 0;
  }
  __syncthreads();  // the slots may still be read by a previous call
  if (lane == kWarpSize - 1) {
    warp_totals[warp] = inclusive;
  }
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarpSize); ++w) {
    before += w < warp ? warp_totals[w] : 0;
    total += warp_totals[w];
  }
  return before + inclusive - value;
}

// One block per image, thread i for digit 255 − i: counts summed over the tiles in order, then
// the digit whose cumulative count from the top reaches the rank joins the prefix.
template <typename key_t>
__global__ void radix_select_kernel(const int* __restrict__ hist, int64_t tiles, int pass,
                                    int64_t kept, int64_t* __restrict__ state) {
  const int64_t b = blockIdx.x;
  const int digit = kBins - 1 - static_cast<int>(threadIdx.x);
  int count = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    count += hist[(b * tiles + t) * kBins + digit];
  }
  const int64_t rank = pass == 0 ? kept : state[b * kStateFields + 1];
  const key_t prefix = pass == 0 ? key_t(0) : static_cast<key_t>(state[b * kStateFields]);
  int total = 0;
  const int above = block_exclusive_scan(count, total);
  if (above < rank && rank <= above + count) {
    const key_t found = prefix | (static_cast<key_t>(digit) << digit_shift<key_t>(pass));
    state[b * kStateFields] = static_cast<int64_t>(found);
    state[b * kStateFields + 1] = rank - above;
  }
}

// ---- the mask and the masked copy ----------------------------------------------------------

enum class Rule { kThreshold, kNone, kAll, kTop };

template <typename acc_t>
struct Decision {
  Rule rule;
  acc_t cut;             // kThreshold: keep e > cut
  const int64_t* state;  // kTop: the radix state after the last pass
  const int* hist;       // kTop: the last pass's histograms (tie counts per tile)
};

// Block (b, t): keep[b, tile] and masked[b, :, tile]; kVec pixels per thread, in index order.
template <int kVec, typename bits_t, typename sal_t, typename acc_t>
__global__ void mask_kernel(Saliency<sal_t, acc_t> saliency, Decision<acc_t> decision,
                            const bits_t* __restrict__ images, bits_t fill, int64_t channels,
                            bits_t* __restrict__ masked, bool* __restrict__ keep) {
  using key_t = key_type<acc_t>;
  const int64_t tiles = saliency.tiles;
  const int64_t plane = saliency.resample.out_plane();
  const int64_t b = blockIdx.x / tiles;
  const int64_t t = blockIdx.x - b * tiles;
  const MapStats<acc_t> s = reduce_map_stats(saliency.stats, b, tiles);
  key_t kth = 0;
  int64_t ties_left = 0;  // ties of the k-th value still to keep from the current chunk on
  if (decision.rule == Rule::kTop) {
    kth = static_cast<key_t>(decision.state[b * kStateFields]);
    const int digit = static_cast<int>(kth & (kBins - 1));
    int64_t earlier = 0;
    for (int64_t u = threadIdx.x; u < t; u += blockDim.x) {
      earlier += decision.hist[(b * tiles + u) * kBins + digit];
    }
    ties_left = decision.state[b * kStateFields + 1] - block_reduce_sum(earlier);
  }
  const int64_t end = std::min((t + 1) * kMapTile, plane);
  for (int64_t base = t * kMapTile; base < end; base += kVec * blockDim.x) {
    const int64_t p = base + kVec * threadIdx.x;
    const bool inside = p < end;
    acc_t e[kVec];
    int ties = 0;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      e[j] = inside ? saliency.e(b, p + j, s) : acc_t(0);
      ties += inside && ordered_key(e[j]) == kth;
    }
    int64_t local = ties_left;  // ties still to keep before this thread's pixels
    if (decision.rule == Rule::kTop) {  // uniform over the block
      int chunk_ties = 0;
      local -= block_exclusive_scan(ties, chunk_ties);
      ties_left -= chunk_ties;
    }
    Pack<bool, kVec> kept;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const key_t key = ordered_key(e[j]);
      if (decision.rule == Rule::kThreshold) {
        kept.v[j] = e[j] > decision.cut;
      } else if (decision.rule == Rule::kTop) {
        const bool tie = key == kth;
        kept.v[j] = key > kth || (tie && local > 0);
        local -= tie;
      } else {
        kept.v[j] = decision.rule == Rule::kAll;
      }
    }
    if (p >= end) {
      continue;
    }
    store_pack<kVec>(keep + b * plane + p, kept);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t offset = (b * channels + c) * plane + p;
      const Pack<bits_t, kVec> in = load_pack<kVec>(images + offset);
      Pack<bits_t, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        out.v[j] = kept.v[j] ? in.v[j] : fill;
      }
      store_pack<kVec>(masked + offset, out);
    }
  }
}

template <typename bits_t, typename sal_t, typename acc_t>
void launch_mask(const Saliency<sal_t, acc_t>& saliency, const Decision<acc_t>& decision,
                 const at::Tensor& images, double fill, at::Tensor& masked, at::Tensor& keep,
                 cudaStream_t stream) {
  const int64_t plane = saliency.resample.out_plane();
  const auto* in = static_cast<const bits_t*>(images.const_data_ptr());
  auto* out = static_cast<bits_t*>(masked.mutable_data_ptr());
  bits_t fill_bits = 0;
  AMC_DISPATCH_FLOATING(images.scalar_type(), kOp, [&] {
    static_assert(sizeof(scalar_t) <= sizeof(uint64_t));
    if constexpr (sizeof(scalar_t) == sizeof(bits_t)) {
      fill_bits = c10::bit_cast<bits_t>(static_cast<scalar_t>(fill));
    }
  });
  const int vec = vector_width<bits_t>(plane, {in, out, keep.const_data_ptr()});
  const auto blocks = static_cast<unsigned>(images.size(0) * saliency.tiles);
  bool* keep_data = keep.mutable_data_ptr<bool>();
  if (vec == 1) {
    mask_kernel<1><<<blocks, kMapThreads, 0, stream>>>(saliency, decision, in, fill_bits,
                                                       images.size(1), out, keep_data);
  } else {
    mask_kernel<16 / sizeof(bits_t)><<<blocks, kMapThreads, 0, stream>>>(
        saliency, decision, in, fill_bits, images.size(1), out, keep_data);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename bits_t, typename sal_t>
void saliency_mask_of(const at::Tensor& images, const at::Tensor& saliency, double threshold,
                      double top_fraction, double fill, at::Tensor& masked, at::Tensor& keep,
                      cudaStream_t stream) {
  using acc_t = acc_type<sal_t>;
  using key_t = key_type<acc_t>;
  const auto acc_options = saliency.options().dtype(c10::CppTypeToScalarType<acc_t>());
  const int64_t images_count = images.size(0);
  const Resampler<acc_t> resample{saliency.size(1), saliency.size(2), images.size(2),
                                  images.size(3), false};
  const int64_t plane = resample.out_plane();
  const int64_t tiles = ceil_div(plane, kMapTile);
  at::Tensor stats = at::empty({images_count * tiles * kStatFields}, acc_options);
  const Saliency<sal_t, acc_t> maps{saliency.const_data_ptr<sal_t>(), resample,
                                    stats.const_data_ptr<acc_t>(), tiles};
  launch_map_stats(maps.maps, resample, images_count, tiles, stats.mutable_data_ptr<acc_t>(),
                   stream);
  Decision<acc_t> decision{Rule::kThreshold, static_cast<acc_t>(threshold), nullptr, nullptr};
  at::Tensor state = at::empty({images_count, kStateFields}, saliency.options().dtype(at::kLong));
  at::Tensor hist = at::empty({images_count * tiles * kBins}, saliency.options().dtype(at::kInt));
  if (top_fraction >= 0) {
    const auto kept = static_cast<int64_t>(top_fraction * static_cast<double>(plane) + 0.5);
    decision.rule = kept <= 0 ? Rule::kNone : (kept >= plane ? Rule::kAll : Rule::kTop);
  }
  if (decision.rule == Rule::kTop) {
    const auto kept = static_cast<int64_t>(top_fraction * static_cast<double>(plane) + 0.5);
    for (int pass = 0; pass < static_cast<int>(sizeof(key_t)); ++pass) {
      radix_histogram_kernel<<<static_cast<unsigned>(images_count * tiles), kMapThreads, 0,
                               stream>>>(maps, state.const_data_ptr<int64_t>(), pass,
                                         hist.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      radix_select_kernel<key_t><<<static_cast<unsigned>(images_count), kBins, 0, stream>>>(
          hist.const_data_ptr<int>(), tiles, pass, kept, state.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    decision.state = state.const_data_ptr<int64_t>();
    decision.hist = hist.const_data_ptr<int>();
  }
  launch_mask<bits_t>(maps, decision, images, fill, masked, keep, stream);
}

std::tuple<at::Tensor, at::Tensor> saliency_mask_fwd_cuda(const at::Tensor& images,
                                                          const at::Tensor& saliency,
                                                          double threshold, double top_fraction,
                                                          double fill) {
  saliency_mask_check_inputs(kOp, images, saliency, top_fraction, /*same_device=*/true);
  const c10::cuda::CUDAGuard guard(images.device());
  const at::Tensor image_data = images.contiguous();
  const at::Tensor saliency_data = saliency.contiguous();
  at::Tensor masked = at::empty_like(image_data);
  at::Tensor keep =
      at::empty({images.size(0), images.size(2), images.size(3)}, images.options().dtype(at::kBool));
  if (keep.numel() == 0) {
    return {masked, keep};
  }
  AMC_CHECK(saliency.size(1) > 0 && saliency.size(2) > 0, kOp,
            "saliency maps must not be empty, got ", saliency.sizes());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(saliency_data.scalar_type(), kOp, [&] {
    using sal_t = scalar_t;
    switch (image_data.element_size()) {
      case 2:
        saliency_mask_of<uint16_t, sal_t>(image_data, saliency_data, threshold, top_fraction,
                                          fill, masked, keep, stream);
        break;
      case 4:
        saliency_mask_of<uint32_t, sal_t>(image_data, saliency_data, threshold, top_fraction,
                                          fill, masked, keep, stream);
        break;
      default:
        saliency_mask_of<uint64_t, sal_t>(image_data, saliency_data, threshold, top_fraction,
                                          fill, masked, keep, stream);
    }
  });
  return {masked, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) { m.impl("saliency_mask_fwd", &saliency_mask_fwd_cuda); }

}  // namespace amc_kernels::cuda
