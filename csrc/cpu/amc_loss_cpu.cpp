// amc_loss_fwd and amc_loss_bwd on CPU (docs/design.md#22-amc_loss).
// Formula: ℓ_ij = S_ij·θ_ij² + (1 − S_ij)·max(0, m − θ_ij)², S_ij = 1[y_i = y_j],
//   θ_ij = arccos(clamp(⟨ẑ_i, ẑ_j⟩, −1 + δ, 1 − δ)), ẑ = z / max(‖z‖, ε) (ε = norm_eps, δ of
//   cosine_bound, math.h). The backward computes nothing when output_mask leaves the gradient out.
// pairs="halves": pairs (k, k + ⌊N/2⌋); O(N·D), at::parallel_for over pairs.
// pairs="all": the N×N matrix is never held. The unit rows are cut into square tiles; each tile
//   pair I ≤ J of the symmetric cosine matrix (strictly upper within a diagonal tile) is one task:
//   one BLAS GEMM of the cosine tile, then a vectorised epilogue adding every ℓ_ij to the anchor
//   sums R_i and R_j. The pairs are cut into one contiguous run per thread (for_each_tile_pair),
//   each with its own accumulators, summed at the end: race-free, O(threads·N) statistics, one
//   parallel region, deterministic for a given thread count. Loss: Σ_{i<j} ℓ_ij = ΣR/2 ("sum"),
//   divided by N(N−1)/2 ("mean"), or r_i = R_i/(N−1) ("none").
//   The backward recomputes every tile, turns it into G_ij = (u_i + u_j)·dℓ/dθ·dθ/dc in place
//   (u: the upstream gradient per anchor) and adds G Z_J to dZ_I and Gᵀ Z_I to dZ_J in its
//   thread's accumulator (O(threads·N·D)), then the backward of the normalisation.
// Accumulation: fp32 (fp64 for fp64 inputs); the loss is fp32 for fp16/bf16 features, and the
//   gradient has the features' dtype.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_unique.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_amc_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "tile_utils_cpu.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kFwd = "amc_loss_fwd";
constexpr const char* kBwd = "amc_loss_bwd";

// ---- pairs = "all" -------------------------------------------------------------------------

// Σ_j ℓ(anchor, j) over a row of cosines, each ℓ also added to partner_sums[j].
template <typename acc_t>
AMC_SIMD_CLONES acc_t amc_loss_row(const acc_t* cosines, const int32_t* labels,
                                   int32_t anchor_label, acc_t margin, acc_t* partner_sums,
                                   int64_t n) {
  acc_t anchor_sum = 0;
#pragma omp simd reduction(+ : anchor_sum)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t loss =
        amc_pair_loss(clamped_arccos_simd(cosines[j]), labels[j] == anchor_label, margin);
    anchor_sum += loss;
    partner_sums[j] += loss;
  }
  return anchor_sum;
}

// cosines[j] ← (anchor_weight + partner_weights[j]) · dℓ/dθ · dθ/dc.
template <typename acc_t>
AMC_SIMD_CLONES void amc_grad_row(acc_t* cosines, const int32_t* labels,
                                  const acc_t* partner_weights, int32_t anchor_label,
                                  acc_t anchor_weight, acc_t margin, bool grad_at_bounds,
                                  int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t c = cosines[j];
    const acc_t dloss =
        amc_pair_loss_grad(clamped_arccos_simd(c), labels[j] == anchor_label, margin);
    cosines[j] =
        (anchor_weight + partner_weights[j]) * dloss * clamped_arccos_grad(c, grad_at_bounds);
  }
}

// R_i = Σ_{j≠i} ℓ_ij, [N].
template <typename acc_t>
at::Tensor all_pairs_anchor_sums(const at::Tensor& unit, const at::Tensor& ids, acc_t margin) {
  const int64_t n = unit.size(0);
  const int64_t tile = pair_tile_rows(n);
  const int64_t tiles = tile_count(n, tile);
  at::Tensor parts = at::zeros({tile_pair_chunks(tiles), n}, unit.options());
  acc_t* part_data = parts.mutable_data_ptr<acc_t>();
  const int32_t* id_data = ids.const_data_ptr<int32_t>();
  const auto task = [&](TilePair pair, int64_t chunk, const at::Tensor& scratch) {
    const Span r = tile_span(pair.first, n, tile);
    const Span c = tile_span(pair.second, n, tile);
    at::Tensor cosines = scratch[0].narrow(0, 0, r.size).narrow(1, 0, c.size);
    cosine_tile(unit, r, unit, c, cosines);
    const acc_t* values = cosines.const_data_ptr<acc_t>();
    acc_t* sums = part_data + chunk * n;
    for (int64_t i = 0; i < r.size; ++i) {
      const int64_t first = pair.first == pair.second ? i + 1 : 0;
      sums[r.begin + i] +=
          amc_loss_row(values + i * cosines.stride(0) + first, id_data + c.begin + first,
                       id_data[r.begin + i], margin, sums + c.begin + first, c.size - first);
    }
  };
  for_each_tile_pair(tiles, tile, 1, unit.options(), task);
  return parts.sum(0);
}

// dL/dẑ, [N, D], for dL/dℓ_ij = u_i + u_j (i < j).
template <typename acc_t>
at::Tensor all_pairs_unit_grad(const at::Tensor& unit, const at::Tensor& ids,
                               const at::Tensor& anchor_weights, acc_t margin,
                               bool clamp_grad_at_bounds) {
  const int64_t n = unit.size(0);
  const int64_t tile = pair_tile_rows(n);
  const int64_t tiles = tile_count(n, tile);
  at::Tensor parts = at::zeros({tile_pair_chunks(tiles), n, unit.size(1)}, unit.options());
  const int32_t* id_data = ids.const_data_ptr<int32_t>();
  const acc_t* weights = anchor_weights.const_data_ptr<acc_t>();
  const auto task = [&](TilePair pair, int64_t chunk, const at::Tensor& scratch) {
    const Span r = tile_span(pair.first, n, tile);
    const Span c = tile_span(pair.second, n, tile);
    at::Tensor g = scratch[0].narrow(0, 0, r.size).narrow(1, 0, c.size);
    cosine_tile(unit, r, unit, c, g);
    acc_t* values = g.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < r.size; ++i) {
      const int64_t first = pair.first == pair.second ? i + 1 : 0;
      acc_t* row = values + i * g.stride(0);
      std::fill(row, row + first, acc_t(0));
      amc_grad_row(row + first, id_data + c.begin + first, weights + c.begin + first,
                   id_data[r.begin + i], weights[r.begin + i], margin, clamp_grad_at_bounds,
                   c.size - first);
    }
    const at::Tensor part = parts.select(0, chunk);
    part.narrow(0, r.begin, r.size).addmm_(g, unit.narrow(0, c.begin, c.size));
    part.narrow(0, c.begin, c.size).addmm_(g.t(), unit.narrow(0, r.begin, r.size));
  };
  for_each_tile_pair(tiles, tile, 1, unit.options(), task);
  return parts.sum(0);
}

// ---- pairs = "halves" ----------------------------------------------------------------------

// ⟨ẑ_k, ẑ_{k+h}⟩ for k < h = ⌊N/2⌋, with the reference's own ops so that the cosine of a duplicate
// pair rounds as the reference's does (its side of the clamp decides the gradient).
at::Tensor halves_cosines(const at::Tensor& unit) {
  const int64_t half = unit.size(0) / 2;
  return (unit.narrow(0, 0, half) * unit.narrow(0, half, half)).sum(-1);
}

template <typename acc_t>
at::Tensor halves_losses(const at::Tensor& unit, const at::Tensor& ids, acc_t margin) {
  const at::Tensor cosines = halves_cosines(unit);
  const int64_t half = cosines.size(0);
  at::Tensor losses = at::empty({half}, unit.options());
  const acc_t* c = cosines.const_data_ptr<acc_t>();
  const int32_t* id = ids.const_data_ptr<int32_t>();
  acc_t* out = losses.mutable_data_ptr<acc_t>();
  at::parallel_for(0, half, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      out[k] = amc_pair_loss(clamped_arccos(c[k]), id[k] == id[k + half], margin);
    }
  });
  return losses;
}

// dL/dẑ, [N, D], for dL/dℓ_k = pair_weights[k].
template <typename acc_t>
at::Tensor halves_unit_grad(const at::Tensor& unit, const at::Tensor& ids,
                            const at::Tensor& pair_weights, acc_t margin,
                            bool clamp_grad_at_bounds) {
  const at::Tensor cosines = halves_cosines(unit);
  const int64_t half = cosines.size(0);
  const int64_t dim = unit.size(1);
  at::Tensor unit_grad = at::zeros_like(unit);
  const acc_t* c = cosines.const_data_ptr<acc_t>();
  const int32_t* id = ids.const_data_ptr<int32_t>();
  const acc_t* w = pair_weights.const_data_ptr<acc_t>();
  const acc_t* z = unit.const_data_ptr<acc_t>();
  acc_t* dz = unit_grad.mutable_data_ptr<acc_t>();
  at::parallel_for(0, half, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const acc_t dloss = amc_pair_loss_grad(clamped_arccos(c[k]), id[k] == id[k + half], margin);
      const acc_t g = w[k] * dloss * clamped_arccos_grad(c[k], clamp_grad_at_bounds);
      for (int64_t d = 0; d < dim; ++d) {
        dz[k * dim + d] = g * z[(k + half) * dim + d];
        dz[(k + half) * dim + d] = g * z[k * dim + d];
      }
    }
  });
  return unit_grad;
}

// ---- entry points --------------------------------------------------------------------------



// The loss from the anchor sums R_i = Σ_{j≠i} ℓ_ij of pairs="all".
at::Tensor reduce_anchor_sums(const at::Tensor& sums, const std::string& reduction) {
  const int64_t n = sums.size(0);
  if (reduction == "none") {
    return sums / at_least_one(n - 1);
  }
  const at::Tensor total = sums.sum() / 2;
  return reduction == "sum" ? total
                            : total / at_least_one(amc_loss_pair_count(n, "all"));
}


at::Tensor amc_loss_fwd_cpu(const at::Tensor& features, const at::Tensor& labels, double margin,
                            const std::string& pairs, const std::string& reduction) {
  amc_loss_check_inputs(kFwd, features, labels, pairs, reduction);
  const at::Tensor unit = unit_rows(features).unit;
  const at::Tensor ids = amc_loss_label_ids(labels);
  at::Tensor result;
  AMC_DISPATCH_FLOATING(features.scalar_type(), kFwd, [&] {
    using acc_t = acc_type<scalar_t>;
    const auto m = static_cast<acc_t>(margin);
    if (pairs == "all") {
      result = reduce_anchor_sums(all_pairs_anchor_sums(unit, ids, m), reduction);
      return;
    }
    const at::Tensor losses = halves_losses(unit, ids, m);
    const bool summed = reduction == "sum" || losses.numel() == 0;
    result = reduction == "none" ? losses : (summed ? losses.sum() : losses.mean());
  });
  return result;
}

at::Tensor amc_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& features,
                            const at::Tensor& labels, double margin, const std::string& pairs,
                            const std::string& reduction, bool clamp_grad_at_bounds,
                            const c10::List<bool>& output_mask) {
  const bool want_features =
      amc_loss_check_backward(kBwd, grad, features, labels, pairs, reduction, output_mask);
  const int64_t n = features.size(0);
  if (!want_features) {
    return at::empty({0}, features.options());
  }
  const UnitRows rows = unit_rows(features);
  const at::Tensor ids = amc_loss_label_ids(labels);
  const at::Tensor upstream = grad.to(rows.unit.scalar_type()).reshape(-1).contiguous();
  const at::Tensor weights = amc_loss_weights(upstream, n, pairs, reduction);
  at::Tensor unit_grad;
  AMC_DISPATCH_FLOATING(features.scalar_type(), kBwd, [&] {
    using acc_t = acc_type<scalar_t>;
    const auto m = static_cast<acc_t>(margin);
    unit_grad = pairs == "all"
                    ? all_pairs_unit_grad(rows.unit, ids, weights, m, clamp_grad_at_bounds)
                    : halves_unit_grad(rows.unit, ids, weights, m, clamp_grad_at_bounds);
  });
  return unit_rows_backward(rows, unit_grad, features.scalar_type(), clamp_grad_at_bounds);
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("amc_loss_fwd", &amc_loss_fwd_cpu);
  m.impl("amc_loss_bwd", &amc_loss_bwd_cpu);
}

}  // namespace amc_kernels::cpu
