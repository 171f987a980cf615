// amc_loss_fwd and amc_loss_bwd on CUDA (docs/design.md#22-amc_loss).
// Formula: ℓ_ij = S_ij·θ_ij² + (1 − S_ij)·max(0, m − θ_ij)², S_ij = 1[y_i = y_j],
//   θ_ij = arccos(clamp(⟨ẑ_i, ẑ_j⟩, −1 + δ, 1 − δ)), ẑ = z / max(‖z‖, ε) (math.h's constants and
//   pair terms). pairs="all": R_i = Σ_{j≠i} ℓ_ij; "sum" = ΣR/2, "mean" = ΣR / (N(N−1)), "none"
//   r_i = R_i/(N−1). pairs="halves": the pairs (k, k + ⌊N/2⌋). The backward computes nothing
//   when output_mask leaves the gradient out.
// Mapping, "all": the N×N matrix is never held. Forward: a stats sweep (tiles.cuh), one block of
//   256 threads per 64 anchors and run of column tiles, each tile's ℓ summed per row by the warp
//   that owns the row; the splits' partial sums [splits, N] are added in order by a second kernel,
//   then one block reduces the N sums: deterministic, O(N) memory. Backward: a grad sweep whose
//   weights are G_ij = (u_i + u_j)·dℓ/dθ·dθ/dc (u: the upstream weight per anchor, dL/dℓ_ij =
//   u_i + u_j for i < j), dẑ_I = Σ_J G_IJ ẑ_J, then the normalisation backward.
// "halves": one warp per pair (O(N·D)), forward and backward.
// Accumulation: fp32 (fp64 for fp64 inputs); the loss is fp32 for fp16/bf16 features, and the
//   gradient has the features' dtype.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_amc_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "tiles.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kFwd = "amc_loss_fwd";
constexpr const char* kBwd = "amc_loss_bwd";



// ---- pairs = "all" -------------------------------------------------------------------------

// Per split and anchor: Σ_j ℓ_aj over the split's columns (j ≠ a), into partial[split][a].
template <typename acc_t>
struct AmcSumEpilogue {
  static constexpr size_t kExtraBytes = sizeof(acc_t) * kTile;
  const int32_t* ids;
  acc_t margin;
  acc_t* partial;
  int64_t n;

  __device__ int64_t column_end(int64_t /*a0*/, int64_t b_rows) const { return b_rows; }

  __device__ void start(void* extra) const {
    if (threadIdx.x < kTile) {
      static_cast<acc_t*>(extra)[threadIdx.x] = 0;
    }
    __syncthreads();
  }

  // Warp w sums rows w·8 … w·8 + 7 of the tile, lane and lane + 32 being its columns.
  __device__ void consume(const TileCoords& t, const acc_t* c, int ldc, void* extra) const {
    acc_t* sums = static_cast<acc_t*>(extra);
    const int warp = threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = warp * kRowsPerWarp + r;
      const int64_t a = t.a0 + i;
      acc_t total = 0;
      for (int j = lane; j < kTile; j += kWarpSize) {
        const int64_t b = t.b0 + j;
        if (a < t.a_end && b < t.b_end && a != b) {
          total += amc_pair_loss(clamped_arccos(c[i * ldc + j]), ids[a] == ids[b], margin);
        }
      }
      total = warp_reduce_sum(total);
      if (lane == 0) {
        sums[i] += total;
      }
    }
  }

  __device__ void finish(int64_t a0, int64_t a_end, int split, const void* extra) const {
    if (threadIdx.x < kTile && a0 + threadIdx.x < a_end) {
      partial[split * n + a0 + threadIdx.x] = static_cast<const acc_t*>(extra)[threadIdx.x];
    }
  }
};

// sums[a] = scale · Σ_s partial[s][a].
template <typename acc_t>
__global__ void sum_splits_kernel(const acc_t* partial, int splits, int64_t n, acc_t scale,
                                  acc_t* sums) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) {
    return;
  }
  acc_t total = 0;
  for (int s = 0; s < splits; ++s) {
    total += partial[s * n + a];
  }
  sums[a] = total * scale;
}

// The loss of pairs="all" ([N] for "none", else a scalar), in acc_t.
template <typename scalar_t>
at::Tensor all_pairs_loss(const OperandRows& rows, const at::Tensor& ids, double margin,
                          const std::string& reduction, bool allow_tf32, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int64_t n = rows.op.size(0);
  const int splits = sweep_splits(tiles_of(n), tiles_of(n));
  at::Tensor partial = at::empty({splits, n}, rows.factor.options());
  const AmcSumEpilogue<acc_t> epi{ids.const_data_ptr<int32_t>(), static_cast<acc_t>(margin),
                                  partial.mutable_data_ptr<acc_t>(), n};
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    const Sweep<typename Tile::op_t, acc_t> sweep{
        device_ptr<op_t>(rows.op), rows.factor.const_data_ptr<acc_t>(), 0, n,
        device_ptr<op_t>(rows.op), rows.factor.const_data_ptr<acc_t>(), n, rows.op.size(1)};
    launch_stats_sweep<Tile>(sweep, epi, splits, stream);
  });
  const bool per_anchor = reduction == "none";
  at::Tensor sums = at::empty({n}, rows.factor.options());
  const auto anchor_scale = static_cast<acc_t>(per_anchor ? 1.0 / at_least_one(n - 1) : 1.0);
  sum_splits_kernel<acc_t><<<(n + kTileThreads - 1) / kTileThreads, kTileThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), splits, n, anchor_scale, sums.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (per_anchor) {
    return sums;
  }
  at::Tensor loss = at::empty({}, rows.factor.options());
  const double pair_total = at_least_one(amc_loss_pair_count(n, "all"));
  const double divisor = reduction == "sum" ? 2.0 : 2.0 * pair_total;
  scaled_sum<acc_t>(sums, static_cast<acc_t>(1.0 / divisor), loss, stream);
  return loss;
}

// The weights of the backward: G_ab = (u_a + u_b)·dℓ/dθ·dθ/dc, 0 on the diagonal.
template <typename acc_t>
struct AmcGradEpilogue {
  static constexpr size_t kExtraBytes = 0;
  const int32_t* ids;
  const acc_t* weights;
  acc_t margin;
  bool grad_at_bounds;

  __device__ int64_t column_end(int64_t /*a0*/, int64_t b_rows) const { return b_rows; }
  __device__ void stage(const TileCoords& /*t*/, void* /*extra*/) const {}

  __device__ acc_t weight(const TileCoords& t, int i, int j, acc_t cosine,
                          const void* /*extra*/) const {
    const int64_t a = t.a0 + i;
    const int64_t b = t.b0 + j;
    if (a == b) {
      return acc_t(0);
    }
    const acc_t dloss = amc_pair_loss_grad(clamped_arccos(cosine), ids[a] == ids[b], margin);
    return (weights[a] + weights[b]) * dloss * clamped_arccos_grad(cosine, grad_at_bounds);
  }
};

template <typename scalar_t>
void all_pairs_grad(const OperandRows& rows, const at::Tensor& ids, const at::Tensor& weights,
                    double margin, bool clamp_grad_at_bounds, bool allow_tf32, at::Tensor& out,
                    cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int64_t n = rows.op.size(0);
  const int64_t dim = rows.op.size(1);
  const int splits = grad_splits<acc_t>(n, dim, n);
  at::Tensor partial = at::empty({splits, n, dim}, rows.factor.options());
  const AmcGradEpilogue<acc_t> epi{ids.const_data_ptr<int32_t>(), weights.const_data_ptr<acc_t>(),
                                   static_cast<acc_t>(margin), clamp_grad_at_bounds};
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    const Sweep<typename Tile::op_t, acc_t> sweep{
        device_ptr<op_t>(rows.op), rows.factor.const_data_ptr<acc_t>(), 0, n,
        device_ptr<op_t>(rows.op), rows.factor.const_data_ptr<acc_t>(), n, dim};
    launch_grad_sweep<Tile>(sweep, epi, splits, partial.mutable_data_ptr<acc_t>(), stream);
  });
  unit_rows_backward<scalar_t>(partial, splits, 0, rows, 0, n, /*normalize=*/true,
                               clamp_grad_at_bounds, n, 1, out, stream);
}

// ---- pairs = "halves" ----------------------------------------------------------------------

// ⟨ẑ_k, ẑ_{k+h}⟩ by one warp (every lane gets it).
template <typename op_t, typename acc_t>
__device__ acc_t pair_cosine(const op_t* op, const acc_t* factor, int64_t k, int64_t h,
                             int64_t dim) {
  const int lane = threadIdx.x % kWarpSize;
  acc_t dot = 0;
  for (int64_t d = lane; d < dim; d += kWarpSize) {
    dot += static_cast<acc_t>(to_acc(op[k * dim + d])) *
           static_cast<acc_t>(to_acc(op[(k + h) * dim + d]));
  }
  return warp_reduce_sum(dot) * factor[k] * factor[k + h];
}

// One warp per pair k < h: losses[k] = ℓ(k, k + h).
template <typename op_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    halves_loss_kernel(const op_t* op, const acc_t* factor, const int32_t* ids, int64_t h,
                       int64_t dim, acc_t margin, acc_t* losses) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (k >= h) {
    return;
  }
  const acc_t c = pair_cosine(op, factor, k, h, dim);
  if (threadIdx.x % kWarpSize == 0) {
    losses[k] = amc_pair_loss(clamped_arccos(c), ids[k] == ids[k + h], margin);
  }
}

// One warp per pair k < h: dẑ_k = g ẑ_{k+h}, dẑ_{k+h} = g ẑ_k, g = w_k·dℓ/dθ·dθ/dc, into
// unit_grad [N, D] (zero elsewhere, set by the caller).
template <typename op_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    halves_grad_kernel(const op_t* op, const acc_t* factor, const int32_t* ids,
                       const acc_t* pair_weights, int64_t h, int64_t dim, acc_t margin,
                       bool grad_at_bounds, acc_t* unit_grad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (k >= h) {
    return;
  }
  const acc_t c = pair_cosine(op, factor, k, h, dim);
  const acc_t dloss = amc_pair_loss_grad(clamped_arccos(c), ids[k] == ids[k + h], margin);
  const acc_t g = pair_weights[k] * dloss * clamped_arccos_grad(c, grad_at_bounds);
  const acc_t gk = g * factor[k + h];  // multiplies op_{k+h}
  const acc_t gh = g * factor[k];
  for (int64_t d = threadIdx.x % kWarpSize; d < dim; d += kWarpSize) {
    unit_grad[k * dim + d] = gk * static_cast<acc_t>(to_acc(op[(k + h) * dim + d]));
    unit_grad[(k + h) * dim + d] = gh * static_cast<acc_t>(to_acc(op[k * dim + d]));
  }
}

template <typename scalar_t>
at::Tensor halves_loss(const OperandRows& rows, const at::Tensor& ids, double margin,
                       const std::string& reduction, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = typename DeviceType<operand_t<scalar_t>>::type;
  const int64_t h = rows.op.size(0) / 2;
  at::Tensor losses = at::empty({h}, rows.factor.options());
  if (h > 0) {
    halves_loss_kernel<op_t, acc_t>
        <<<(h + kWarpsPerBlock - 1) / kWarpsPerBlock, kTileThreads, 0, stream>>>(
            device_ptr<operand_t<scalar_t>>(rows.op), rows.factor.const_data_ptr<acc_t>(),
            ids.const_data_ptr<int32_t>(), h, rows.op.size(1), static_cast<acc_t>(margin),
            losses.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (reduction == "none") {
    return losses;
  }
  at::Tensor loss = at::empty({}, rows.factor.options());
  const double divisor = reduction == "sum" ? 1.0 : at_least_one(h);
  scaled_sum<acc_t>(losses, static_cast<acc_t>(1.0 / divisor), loss, stream);
  return loss;
}

template <typename scalar_t>
void halves_grad(const OperandRows& rows, const at::Tensor& ids, const at::Tensor& pair_weights,
                 double margin, bool clamp_grad_at_bounds, at::Tensor& out, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = typename DeviceType<operand_t<scalar_t>>::type;
  const int64_t n = rows.op.size(0);
  const int64_t h = n / 2;
  at::Tensor unit_grad = at::zeros({1, n, rows.op.size(1)}, rows.factor.options());
  if (h > 0) {
    halves_grad_kernel<op_t, acc_t>
        <<<(h + kWarpsPerBlock - 1) / kWarpsPerBlock, kTileThreads, 0, stream>>>(
            device_ptr<operand_t<scalar_t>>(rows.op), rows.factor.const_data_ptr<acc_t>(),
            ids.const_data_ptr<int32_t>(), pair_weights.const_data_ptr<acc_t>(), h,
            rows.op.size(1), static_cast<acc_t>(margin), clamp_grad_at_bounds,
            unit_grad.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  unit_rows_backward<scalar_t>(unit_grad, 1, 0, rows, 0, n, /*normalize=*/true,
                               clamp_grad_at_bounds, n, 1, out, stream);
}

// ---- entry points --------------------------------------------------------------------------


template <typename scalar_t>
OperandRows operand_of(const at::Tensor& features, cudaStream_t stream) {
  OperandRows rows = empty_operand_rows(features.size(0), features.size(1), features);
  prepare_rows<scalar_t>(features.unsqueeze(1), 0, /*normalize=*/true, rows, stream);
  return rows;
}

at::Tensor amc_loss_fwd_cuda(const at::Tensor& features, const at::Tensor& labels, double margin,
                             const std::string& pairs, const std::string& reduction) {
  amc_loss_check_inputs(kFwd, features, labels, pairs, reduction, /*same_device=*/true);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t n = features.size(0);
  const auto acc = accumulation_dtype(features);
  const auto options = features.options().dtype(acc);
  if (n == 0 || (pairs == "halves" && n < 2)) {
    const int64_t len = pairs == "all" ? n : n / 2;
    return reduction == "none" ? at::zeros({len}, options) : at::zeros({}, options);
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  const at::Tensor ids = amc_loss_label_ids(labels);
  at::Tensor result;
  AMC_DISPATCH_FLOATING(features.scalar_type(), kFwd, [&] {
    const OperandRows rows = operand_of<scalar_t>(features, stream);
    result = pairs == "all"
                 ? all_pairs_loss<scalar_t>(rows, ids, margin, reduction, allow_tf32, stream)
                 : halves_loss<scalar_t>(rows, ids, margin, reduction, stream);
  });
  return result;
}

at::Tensor amc_loss_bwd_cuda(const at::Tensor& grad, const at::Tensor& features,
                             const at::Tensor& labels, double margin, const std::string& pairs,
                             const std::string& reduction, bool clamp_grad_at_bounds,
                             const c10::List<bool>& output_mask) {
  const bool want_features = amc_loss_check_backward(kBwd, grad, features, labels, pairs,
                                                     reduction, output_mask, /*same_device=*/true);
  const int64_t n = features.size(0);
  if (!want_features) {
    return at::empty({0}, features.options());
  }
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor out = at::zeros(features.sizes(), features.options());
  if (n < 2 || features.size(1) == 0) {  // no pair, or nothing to differentiate
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  const at::Tensor ids = amc_loss_label_ids(labels);
  const at::Tensor upstream = grad.to(accumulation_dtype(features)).reshape(-1).contiguous();
  const at::Tensor weights = amc_loss_weights(upstream, n, pairs, reduction);
  AMC_DISPATCH_FLOATING(features.scalar_type(), kBwd, [&] {
    const OperandRows rows = operand_of<scalar_t>(features, stream);
    if (pairs == "all") {
      all_pairs_grad<scalar_t>(rows, ids, weights, margin, clamp_grad_at_bounds, allow_tf32, out,
                               stream);
    } else {
      halves_grad<scalar_t>(rows, ids, weights, margin, clamp_grad_at_bounds, out, stream);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("amc_loss_fwd", &amc_loss_fwd_cuda);
  m.impl("amc_loss_bwd", &amc_loss_bwd_cuda);
}

}  // namespace amc_kernels::cuda
