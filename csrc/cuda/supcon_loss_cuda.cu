// supcon_loss_fwd and supcon_loss_bwd on CUDA (docs/design.md#23-supcon_loss).
// Formula. The contrast rows are the views stacked view-major (row r = v·N + n, R = V·N rows),
//   then the M negatives: C = R + M rows z_r, L2-normalised (z / max(‖z‖, ε), ε = norm_eps) when
//   `normalize`. Anchors: rows [0, A), A = R ("all") or N ("one"). With l_ac = ⟨z_a, z_c⟩ / T,
//   lse_a  = log Σ_{c ≠ a} exp(l_ac)                   (every contrast row and negative),
//   P_a    = {c < R : c ≠ a, y_c = y_a},  |P_a| = V·count[y_a] − 1,
//   loss_a = −k·(Σ_{c ∈ P_a} l_ac / |P_a| − lse_a) when |P_a| > 0, else exactly 0, k = T/T_base,
//   y the dense class ids of the labels (the sample index without labels). The output is the mean
//   over the A anchors, the sum, or [A]; lse [A] is saved for the backward.
// Backward: dL/d⟨z_a, z_c⟩ = coef_a·p_ac − β_a·1[c ∈ P_a], p_ac = exp(l_ac − lse_a),
//   coef_a = k·w_a/T (w_a the upstream weight; 0 without positives), β_a = coef_a/|P_a|. Row r of
//   dZ collects both roles: dZ_r = Σ_q W_rq z_q, W_rq = [r < A]·g_rq + [q < A]·g_qr.
// Mapping. Forward: a stats sweep (tiles.cuh) with the anchors as owners and all C rows as
//   columns; per tile, the warp that owns a row merges the tile's max-subtracted exp-sum into the
//   row's online log-sum-exp and adds its positives' logits (the label test on the tile replaces
//   the per-class sums of the CPU kernel: O(1) per logit, no O(K·D) table). The splits' partial
//   states [splits, A] are merged in order by a second kernel, and one block reduces the losses.
//   Backward: one grad sweep over the wanted rows of dZ (features [0, R), negatives [R, C)); owner
//   tiles past the anchors only visit the anchor columns. The logit tiles are recomputed; the
//   saved lse makes every p_ac a single exp. Then the normalisation backward (at ‖z‖ = ε the form
//   of newer torch: the op has no clamp_grad_at_bounds). Deterministic: no atomics anywhere.
// Memory: the C × D operand rows, O(splits·A) statistics and O(splits·C·D) gradient partials
//   (splits shrink as the problem grows); never an A × C matrix.
// Accumulation: fp32 (fp64 for fp64 inputs), tensor cores for fp16/bf16 logits.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_supcon_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "tiles.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kFwd = "supcon_loss_fwd";
constexpr const char* kBwd = "supcon_loss_bwd";

// ---- the problem ---------------------------------------------------------------------------

struct Problem {
  int64_t samples;  // N
  int64_t views;    // V
  int64_t rows;     // R = V·N contrast rows
  int64_t anchors;  // A
  int64_t columns;  // C = R + M
  int64_t dim;      // D
  double temperature;
  double scale;           // k = T / T_base
  at::Tensor ids;         // [N] int32 dense class id of each sample
  at::Tensor positives;   // [A] acc dtype |P_a|
};

Problem make_problem(const at::Tensor& features, const std::optional<at::Tensor>& labels,
                     const std::optional<at::Tensor>& negatives, double temperature,
                     double base_temperature, const std::string& contrast_mode) {
  Problem p;
  p.samples = features.size(0);
  p.views = features.size(1);
  p.dim = features.size(2);
  p.rows = p.samples * p.views;
  p.anchors = contrast_mode == "all" ? p.rows : p.samples;
  p.columns = p.rows + (negatives.has_value() ? negatives->size(0) : 0);
  p.temperature = temperature;
  p.scale = temperature / base_temperature;
  const auto acc = accumulation_dtype(features);
  at::Tensor sample_class;
  at::Tensor class_size;
  if (labels.has_value()) {
    const auto [values, inverse, counts] =
        at::_unique2(*labels, /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/true);
    sample_class = inverse.reshape({-1});
    class_size = counts;
  } else {
    sample_class = at::arange(p.samples, features.options().dtype(at::kLong));
    class_size = at::ones({p.samples}, features.options().dtype(at::kLong));
  }
  p.ids = sample_class.to(at::kInt).contiguous();
  const at::Tensor per_sample = class_size.index_select(0, sample_class) * p.views - 1;
  p.positives = per_sample.repeat({p.anchors / std::max<int64_t>(p.samples, 1)})
                    .to(acc)
                    .contiguous();
  return p;
}

// The operand rows [C, D]: the features view-major, then the negatives.
template <typename scalar_t>
OperandRows operand_of(const Problem& p, const at::Tensor& features,
                       const std::optional<at::Tensor>& negatives, bool normalize,
                       cudaStream_t stream) {
  OperandRows rows = empty_operand_rows(p.columns, p.dim, features);
  prepare_rows<scalar_t>(features, 0, normalize, rows, stream);
  if (negatives.has_value()) {
    prepare_rows<scalar_t>(negatives->unsqueeze(1), p.rows, normalize, rows, stream);
  }
  return rows;
}

// Whether rows r and q (both contrast rows) are of one class.
__device__ __forceinline__ bool same_class(const int32_t* ids, int64_t samples, int64_t rows,
                                           int64_t r, int64_t q) {
  return r < rows && q < rows && ids[r % samples] == ids[q % samples];
}

// ---- forward -------------------------------------------------------------------------------

// Per split and anchor: the online log-sum-exp (max, sum) over the split's columns c ≠ a and
// the sum of the positives' logits, into partial_max/sum/positive [split][a].
template <typename acc_t>
struct SupconStatsEpilogue {
  static constexpr size_t kExtraBytes = 3 * sizeof(acc_t) * kTile;
  const int32_t* ids;
  int64_t samples;
  int64_t rows;
  int64_t anchors;
  acc_t inv_temperature;
  acc_t* partial_max;
  acc_t* partial_sum;
  acc_t* partial_positive;

  __device__ int64_t column_end(int64_t /*a0*/, int64_t b_rows) const { return b_rows; }

  __device__ void start(void* extra) const {
    acc_t* state = static_cast<acc_t*>(extra);
    if (threadIdx.x < kTile) {
      state[threadIdx.x] = -std::numeric_limits<acc_t>::infinity();
      state[kTile + threadIdx.x] = 0;
      state[2 * kTile + threadIdx.x] = 0;
    }
    __syncthreads();
  }

  // Warp w folds rows w·8 … w·8 + 7 of the tile, lane and lane + 32 being its columns.
  __device__ void consume(const TileCoords& t, const acc_t* c, int ldc, void* extra) const {
    acc_t* state = static_cast<acc_t*>(extra);
    const int warp = threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    constexpr acc_t kEmpty = -std::numeric_limits<acc_t>::infinity();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = warp * kRowsPerWarp + r;
      const int64_t a = t.a0 + i;
      acc_t logit[2];
      bool valid[2];
      acc_t top = kEmpty;
      for (int h = 0; h < 2; ++h) {
        const int64_t b = t.b0 + lane + h * kWarpSize;
        valid[h] = a < t.a_end && b < t.b_end && b != a;
        logit[h] = c[i * ldc + lane + h * kWarpSize] * inv_temperature;
        top = valid[h] && logit[h] > top ? logit[h] : top;
      }
      top = warp_reduce_max(top);
      if (top == kEmpty) {  // the same for the whole warp
        continue;
      }
      acc_t sum = 0;
      acc_t positive = 0;
      for (int h = 0; h < 2; ++h) {
        const int64_t b = t.b0 + lane + h * kWarpSize;
        if (valid[h]) {
          sum += std::exp(logit[h] - top);
          positive += same_class(ids, samples, rows, a, b) ? logit[h] : acc_t(0);
        }
      }
      sum = warp_reduce_sum(sum);
      positive = warp_reduce_sum(positive);
      if (lane == 0) {
        OnlineLogSumExp<acc_t> lse{state[i], state[kTile + i]};
        lse.merge({top, sum});
        state[i] = lse.max;
        state[kTile + i] = lse.sum;
        state[2 * kTile + i] += positive;
      }
    }
  }

  __device__ void finish(int64_t a0, int64_t a_end, int split, const void* extra) const {
    const acc_t* state = static_cast<const acc_t*>(extra);
    const int i = threadIdx.x;
    if (i < kTile && a0 + i < a_end) {
      const int64_t at = split * anchors + a0 + i;
      partial_max[at] = state[i];
      partial_sum[at] = state[kTile + i];
      partial_positive[at] = state[2 * kTile + i];
    }
  }
};

// Per anchor: the splits merged in order; lse[a] and loss[a].
template <typename acc_t>
__global__ void supcon_finish_kernel(const acc_t* partial_max, const acc_t* partial_sum,
                                     const acc_t* partial_positive, int splits, int64_t anchors,
                                     const acc_t* positives, acc_t scale, acc_t* lse,
                                     acc_t* loss) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= anchors) {
    return;
  }
  auto state = OnlineLogSumExp<acc_t>::empty();
  acc_t positive = 0;
  for (int s = 0; s < splits; ++s) {
    state.merge({partial_max[s * anchors + a], partial_sum[s * anchors + a]});
    positive += partial_positive[s * anchors + a];
  }
  const acc_t value = state.value();
  const acc_t count = positives[a];
  lse[a] = value;
  loss[a] = count > acc_t(0) ? -scale * (positive / count - value) : acc_t(0);
}

// (loss [A] per anchor, lse [A]).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> anchor_losses(const Problem& p, const OperandRows& z,
                                                 bool allow_tf32, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int splits = sweep_splits(tiles_of(p.anchors), tiles_of(p.columns));
  const auto options = z.factor.options();
  at::Tensor partial = at::empty({3, splits, p.anchors}, options);
  acc_t* base = partial.mutable_data_ptr<acc_t>();
  const int64_t part = splits * p.anchors;
  const SupconStatsEpilogue<acc_t> epi{p.ids.const_data_ptr<int32_t>(),
                                       p.samples,
                                       p.rows,
                                       p.anchors,
                                       static_cast<acc_t>(1.0 / p.temperature),
                                       base,
                                       base + part,
                                       base + 2 * part};
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    const Sweep<typename Tile::op_t, acc_t> sweep{
        device_ptr<op_t>(z.op), z.factor.const_data_ptr<acc_t>(), 0, p.anchors,
        device_ptr<op_t>(z.op), z.factor.const_data_ptr<acc_t>(), p.columns, p.dim};
    launch_stats_sweep<Tile>(sweep, epi, splits, stream);
  });
  at::Tensor lse = at::empty({p.anchors}, options);
  at::Tensor loss = at::empty({p.anchors}, options);
  supcon_finish_kernel<acc_t>
      <<<(p.anchors + kTileThreads - 1) / kTileThreads, kTileThreads, 0, stream>>>(
          base, base + part, base + 2 * part, splits, p.anchors,
          p.positives.const_data_ptr<acc_t>(), static_cast<acc_t>(p.scale),
          lse.mutable_data_ptr<acc_t>(), loss.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, lse};
}

// ---- backward ------------------------------------------------------------------------------

// W_rq = [r < A]·g_rq + [q < A]·g_qr (r ≠ q), g_ac = coef_a·exp(l_ac − shift_a) − β_a·1[c ∈ P_a].
template <typename acc_t>
struct SupconGradEpilogue {
  static constexpr size_t kExtraBytes = 0;
  const int32_t* ids;
  int64_t samples;
  int64_t rows;
  int64_t anchors;
  acc_t inv_temperature;
  const acc_t* coef;
  const acc_t* shift;
  const acc_t* beta;

  // Rows past the anchors meet only the anchor columns.
  __device__ int64_t column_end(int64_t a0, int64_t b_rows) const {
    return a0 < anchors ? b_rows : anchors;
  }
  __device__ void stage(const TileCoords& /*t*/, void* /*extra*/) const {}

  __device__ acc_t weight(const TileCoords& t, int i, int j, acc_t dot,
                          const void* /*extra*/) const {
    const int64_t r = t.a0 + i;
    const int64_t q = t.b0 + j;
    if (r == q) {
      return acc_t(0);
    }
    const acc_t logit = dot * inv_temperature;
    const bool same = same_class(ids, samples, rows, r, q);
    acc_t w = 0;
    if (r < anchors) {
      w += coef[r] * std::exp(logit - shift[r]) - (same ? beta[r] : acc_t(0));
    }
    if (q < anchors) {
      w += coef[q] * std::exp(logit - shift[q]) - (same ? beta[q] : acc_t(0));
    }
    return w;
  }
};

// The softmax and positive parts of dL/dz for rows [first, last), as splits partials
// [splits, last − first, D]; returns the partial and its number of splits.
template <typename scalar_t>
std::tuple<at::Tensor, int> row_grad_partials(const Problem& p, const OperandRows& z,
                                              const at::Tensor& coef, const at::Tensor& shift,
                                              const at::Tensor& beta, int64_t first, int64_t last,
                                              bool allow_tf32, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int splits = grad_splits<acc_t>(last - first, p.dim, p.columns);
  at::Tensor partial = at::empty({splits, last - first, p.dim}, z.factor.options());
  const SupconGradEpilogue<acc_t> epi{p.ids.const_data_ptr<int32_t>(),
                                      p.samples,
                                      p.rows,
                                      p.anchors,
                                      static_cast<acc_t>(1.0 / p.temperature),
                                      coef.const_data_ptr<acc_t>(),
                                      shift.const_data_ptr<acc_t>(),
                                      beta.const_data_ptr<acc_t>()};
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    const Sweep<typename Tile::op_t, acc_t> sweep{
        device_ptr<op_t>(z.op), z.factor.const_data_ptr<acc_t>(), first, last,
        device_ptr<op_t>(z.op), z.factor.const_data_ptr<acc_t>(), p.columns, p.dim};
    launch_grad_sweep<Tile>(sweep, epi, splits, partial.mutable_data_ptr<acc_t>(), stream);
  });
  return {partial, splits};
}

// ---- entry points --------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> supcon_loss_fwd_cuda(
    const at::Tensor& features, const std::optional<at::Tensor>& labels,
    const std::optional<at::Tensor>& negatives, double temperature, double base_temperature,
    std::string contrast_mode, bool normalize, std::string reduction) {
  supcon_check_inputs(kFwd, features, labels, negatives, temperature, base_temperature, contrast_mode,
                      reduction, /*same_device=*/true);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto acc = accumulation_dtype(features);
  const auto options = features.options().dtype(acc);
  const int64_t anchors =
      contrast_mode == "all" ? features.size(0) * features.size(1) : features.size(0);
  if (anchors == 0) {
    return {reduction == "none" ? at::zeros({0}, options) : at::zeros({}, options),
            at::empty({0}, options)};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  const Problem p =
      make_problem(features, labels, negatives, temperature, base_temperature, contrast_mode);
  at::Tensor per_anchor;
  at::Tensor lse;
  AMC_DISPATCH_FLOATING(features.scalar_type(), kFwd, [&] {
    using acc_t = acc_type<scalar_t>;
    const OperandRows z = operand_of<scalar_t>(p, features, negatives, normalize, stream);
    std::tie(per_anchor, lse) = anchor_losses<scalar_t>(p, z, allow_tf32, stream);
    if (reduction != "none") {
      at::Tensor loss = at::empty({}, options);
      const double divisor = reduction == "mean" ? static_cast<double>(p.anchors) : 1.0;
      scaled_sum<acc_t>(per_anchor, static_cast<acc_t>(1.0 / divisor), loss, stream);
      per_anchor = loss;
    }
  });
  return {per_anchor, lse};
}

std::tuple<at::Tensor, at::Tensor> supcon_loss_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& features, const std::optional<at::Tensor>& labels,
    const std::optional<at::Tensor>& negatives, const at::Tensor& lse, double temperature,
    double base_temperature, std::string contrast_mode, bool normalize, std::string reduction,
    const c10::List<bool>& output_mask) {
  supcon_check_inputs(kBwd, features, labels, negatives, temperature, base_temperature, contrast_mode,
                      reduction, /*same_device=*/true);
  // Plain bools: the dispatch lambda captures them (no structured bindings in C++17 lambdas).
  const std::array<bool, 2> mask =
      checked_output_mask<2>(output_mask, kBwd, "features, negatives");
  const bool want_features = mask[0];
  const bool want_negatives = mask[1] && negatives.has_value();
  const auto dtype = accumulation_dtype(features);
  const int64_t anchors =
      contrast_mode == "all" ? features.size(0) * features.size(1) : features.size(0);
  AMC_CHECK(lse.dim() == 1 && lse.size(0) == anchors && lse.scalar_type() == dtype, kBwd,
            "lse must be the [", anchors, "] ", dtype, " statistics of supcon_loss_fwd, got ",
            lse.sizes(), " ", lse.scalar_type());
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor grad_features = want_features ? at::empty(features.sizes(), features.options())
                                           : at::empty({0}, features.options());
  at::Tensor grad_negatives =
      want_negatives ? at::empty(negatives->sizes(), negatives->options())
                     : at::empty({0}, negatives.has_value() ? negatives->options()
                                                            : features.options());
  if (!want_features && !want_negatives) {
    return {grad_features, grad_negatives};
  }
  if (anchors == 0) {  // no loss term depends on any row
    grad_features.zero_();
    grad_negatives.zero_();
    return {grad_features, grad_negatives};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  const Problem p =
      make_problem(features, labels, negatives, temperature, base_temperature, contrast_mode);
  const at::Tensor with_positives = p.positives > 0;
  const at::Tensor coef =
      at::where(with_positives,
                supcon_anchor_weights(grad, p.anchors, reduction, dtype) * (p.scale / temperature),
                at::zeros_like(p.positives))
          .contiguous();
  const at::Tensor shift =
      at::where(coef != 0, lse, at::full_like(lse, std::numeric_limits<double>::infinity()))
          .contiguous();
  const at::Tensor beta = (coef / p.positives.clamp_min(1)).contiguous();
  const int64_t first = want_features ? 0 : p.rows;
  const int64_t last = want_negatives ? p.columns : p.rows;
  AMC_DISPATCH_FLOATING(features.scalar_type(), kBwd, [&] {
    const OperandRows z = operand_of<scalar_t>(p, features, negatives, normalize, stream);
    at::Tensor partial;
    int splits;
    std::tie(partial, splits) =
        row_grad_partials<scalar_t>(p, z, coef, shift, beta, first, last, allow_tf32, stream);
    if (want_features) {
      unit_rows_backward<scalar_t>(partial, splits, 0, z, 0, p.rows, normalize,
                                   /*grad_at_bounds=*/false, p.samples, p.views, grad_features,
                                   stream);
    }
    if (want_negatives) {
      const int64_t count = p.columns - p.rows;
      unit_rows_backward<scalar_t>(partial, splits, p.rows - first, z, p.rows, count, normalize,
                                   /*grad_at_bounds=*/false, count, 1, grad_negatives, stream);
    }
  });
  return {grad_features, grad_negatives};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("supcon_loss_fwd", &supcon_loss_fwd_cuda);
  m.impl("supcon_loss_bwd", &supcon_loss_bwd_cuda);
}

}  // namespace amc_kernels::cuda
