// saliency_mask_fwd on CPU (docs/design.md#27-saliency_mask); not differentiable.
// Formula: s = bilinear(saliency_b → H×W) (align_corners=False, torch's evaluation order),
// then e = (s − min s)/((max s − min s) + ε) (minmax_normalized, ε = map_eps of math.h) with
// the reference's arithmetic in the saliency's acc_type (fp32; fp64 for fp64 saliency).
// keep = e > threshold, the threshold rounded to that dtype as torch compares a tensor with a
// Python float; or, with top_fraction f, the k = ⌊f·H·W + ½⌋ largest e with ties to the lower
// flat index (the reference's stable descending sort): v = the k-th largest e (nth_element),
// keep every e > v and the first k − #{e > v} pixels with e == v in index order.
// masked = keep ? image : fill, every channel.
// Decisions match the reference exactly whenever e is computed to the same bits; the resize
// can differ from torch's by an ulp (FMA contraction inside ATen), which matters only for a
// pixel within an ulp of the threshold or of the k-th value.
// Mapping: at::parallel_for over images for the keep mask (a resize, one pass for min/max and
// one for the decisions), then over (image, channel) planes for the masked copy: one pass over
// the image data. Accumulation: acc_type of the saliency.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_saliency_mask.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "map_utils_cpu.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kOp = "saliency_mask";

// keep[i] = the i-th pixel is among the k largest e, ties to the lower index.
template <typename acc_t>
void keep_top(const acc_t* e, int64_t n, int64_t k, bool* keep, std::vector<acc_t>& scratch) {
  if (k <= 0 || k >= n) {
    std::fill(keep, keep + n, k > 0);
    return;
  }
  scratch.assign(e, e + n);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                   std::greater<acc_t>());
  const acc_t kth = scratch[k - 1];
  int64_t ties_kept = k - std::count_if(e, e + n, [kth](acc_t x) { return x > kth; });
  for (int64_t i = 0; i < n; ++i) {
    const bool tie = e[i] == kth && ties_kept > 0;
    ties_kept -= tie;
    keep[i] = e[i] > kth || tie;
  }
}

// keep [B, H·W] from the saliency maps [B, h·w].
template <typename scalar_t>
void saliency_keep(const at::Tensor& saliency, int64_t height, int64_t width, double threshold,
                   double top_fraction, bool* keep) {
  using acc_t = acc_type<scalar_t>;
  const int64_t images = saliency.size(0);
  const int64_t source_plane = saliency.size(1) * saliency.size(2);
  const int64_t plane = height * width;
  const bool resized = saliency.size(1) != height || saliency.size(2) != width;
  const BilinearResize<acc_t> resize(saliency.size(1), saliency.size(2), height, width);
  const scalar_t* data = saliency.const_data_ptr<scalar_t>();
  const acc_t cut = static_cast<acc_t>(threshold);
  const auto kept = static_cast<int64_t>(top_fraction * static_cast<double>(plane) + 0.5);
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> source(source_plane), e(plane), scratch(resize.scratch_size());
    std::vector<acc_t> order;
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* s = read_row(data + b * source_plane, source_plane, source.data());
      if (resized) {
        resize.apply(s, e.data(), scratch.data());
      } else {
        std::copy(s, s + plane, e.data());
      }
      const auto [lo, hi] = min_max(e.data(), plane);
      for (int64_t i = 0; i < plane; ++i) {
        e[i] = minmax_normalized(e[i], lo, hi);
      }
      bool* keep_b = keep + b * plane;
      if (top_fraction < 0) {
        for (int64_t i = 0; i < plane; ++i) {
          keep_b[i] = e[i] > cut;
        }
      } else {
        keep_top(e.data(), plane, kept, keep_b, order);
      }
    }
  });
}

// masked[b, c] = keep[b] ? images[b, c] : fill over every (image, channel) plane: a branch-free
// select on raw bits (bits_t has the element's size; keep read as bytes 0/1), which vectorises
// for every dtype.
template <typename bits_t>
void masked_copy(const at::Tensor& images, const uint8_t* keep, bits_t fill, at::Tensor& masked) {
  const int64_t channels = images.size(1);
  const int64_t plane = images.size(2) * images.size(3);
  const auto* src = static_cast<const bits_t*>(images.const_data_ptr());
  auto* dst = static_cast<bits_t*>(masked.mutable_data_ptr());
  at::parallel_for(0, images.size(0) * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* keep_b = keep + (p / channels) * plane;
      const bits_t* in = src + p * plane;
      bits_t* out = dst + p * plane;
#pragma omp simd
      for (int64_t i = 0; i < plane; ++i) {
        const auto kept = static_cast<bits_t>(-static_cast<bits_t>(keep_b[i]));  // 0 or all ones
        out[i] = static_cast<bits_t>((in[i] & kept) | (fill & ~kept));
      }
    }
  });
}

template <typename scalar_t>
void masked_copy_of(const at::Tensor& images, const uint8_t* keep, double fill,
                    at::Tensor& masked) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                    std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(bits_t) == sizeof(scalar_t));
  masked_copy(images, keep, c10::bit_cast<bits_t>(static_cast<scalar_t>(fill)), masked);
}

std::tuple<at::Tensor, at::Tensor> saliency_mask_fwd_cpu(const at::Tensor& images,
                                                         const at::Tensor& saliency,
                                                         double threshold, double top_fraction,
                                                         double fill) {
  saliency_mask_check_inputs(kOp, images, saliency, top_fraction);
  const int64_t height = images.size(2);
  const int64_t width = images.size(3);
  const at::Tensor image_data = images.contiguous();
  const at::Tensor saliency_data = saliency.contiguous();
  at::Tensor masked = at::empty_like(image_data);
  at::Tensor keep = at::empty({images.size(0), height, width}, images.options().dtype(at::kBool));
  if (keep.numel() == 0) {
    return {masked, keep};
  }
  AMC_CHECK(saliency.size(1) > 0 && saliency.size(2) > 0, kOp,
            "saliency maps must not be empty, got ", saliency.sizes());
  bool* keep_data = keep.mutable_data_ptr<bool>();
  const auto* keep_bytes = reinterpret_cast<const uint8_t*>(keep_data);
  AMC_DISPATCH_FLOATING(saliency_data.scalar_type(), kOp, [&] {
    saliency_keep<scalar_t>(saliency_data, height, width, threshold, top_fraction, keep_data);
  });
  AMC_DISPATCH_FLOATING(image_data.scalar_type(), kOp,
                        [&] { masked_copy_of<scalar_t>(image_data, keep_bytes, fill, masked); });
  return {masked, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) { m.impl("saliency_mask_fwd", &saliency_mask_fwd_cpu); }

}  // namespace amc_kernels::cpu
