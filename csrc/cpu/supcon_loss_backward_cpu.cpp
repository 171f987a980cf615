// supcon_loss_bwd on CPU (docs/design.md#23-supcon_loss); the problem, the task schedule and the
// forward are in supcon_loss_cpu.cpp, with the notation.
//
// Formula. dL/dl_ac = k·w_a·(p_ac − 1[c ∈ P_a] / |P_a|), p_ac = exp(l_ac − lse_a), w_a the
// upstream weight of anchor a, 0 for an anchor without positives. The softmax part recomputes the
// logit tiles; the positive part uses the class sums again; then the normalisation backward.
// output_mask: without grad_negatives no GEMM writes the negatives' rows of dZ; without
// grad_features only the anchor × other-column tiles that reach the negatives run, each with its
// one GEMM into the negatives' rows.
//
// Mapping. The tasks, rounds and GEMM tiles of the forward: every row of dZ is updated by one
// thread at a time, in the fixed order of the rounds. The backward recomputes each GEMM tile,
// turns it in place into G, the softmax part of dL/d⟨z_i, z_j⟩ (both directions of a symmetric
// tile at once), and adds G·Z_J to dZ_I and Gᵀ·Z_I to dZ_J (two GEMMs; one for a diagonal tile,
// whose G is symmetric). The positives are O(N·D) tensor ops on the class sums; then
// unit_rows_backward (tile_utils_cpu.h) when `normalize`.
// Accumulation: fp32 (fp64 for fp64 inputs), dZ [C, D] included; the gradients are cast to the
// inputs' dtype at the end.
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_supcon_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "supcon_loss_cpu.h"

namespace amc_kernels::cpu::supcon {
namespace {

constexpr const char* kBwd = "supcon_loss_bwd";

// ---- backward: softmax part ----------------------------------------------------------------

// row[j] ← coef·exp(row[j] − shift) + column_coef[j]·exp(row[j] − column_shift[j]).
template <typename acc_t>
AMC_SIMD_CLONES void symmetric_grad_row(acc_t* row, acc_t coef, acc_t shift,
                                        const acc_t* column_coef, const acc_t* column_shift,
                                        int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = row[j];
    row[j] = coef * simd_exp(v - shift) + column_coef[j] * simd_exp(v - column_shift[j]);
  }
}

// row[j] ← coef·exp(row[j] − shift).
template <typename acc_t>
AMC_SIMD_CLONES void anchor_grad_row(acc_t* row, acc_t coef, acc_t shift, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    row[j] = coef * simd_exp(row[j] - shift);
  }
}

// g ← U + Uᵀ for the strict upper triangle U of the n × n matrix g: zero diagonal, lower
// triangle mirrored from the upper one.
template <typename acc_t>
void mirror_upper_triangle(acc_t* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    g[i * n + i] = 0;
    for (int64_t j = i + 1; j < n; ++j) {
      g[j * n + i] = g[i * n + j];
    }
  }
}

// The rows of dZ that a backward fills: [0, R) for grad_features, [R, C) for grad_negatives.
struct WantedRows {
  bool features;
  bool negatives;

  // The other columns [A, C) whose rows are wanted: [A, R) with the features, [R, C) with the
  // negatives.
  Span others(const Problem& p) const {
    const int64_t begin = features ? p.anchors : p.rows;
    return {begin, (negatives ? p.columns : p.rows) - begin};
  }
};

// The columns of `cols` within `wanted`, as an offset into cols and a size (0 if none).
Span overlap(Span cols, Span wanted) {
  const int64_t begin = std::max(cols.begin, wanted.begin);
  const int64_t end = std::min(cols.begin + cols.size, wanted.begin + wanted.size);
  return {begin - cols.begin, std::max<int64_t>(0, end - begin)};
}

// dZ += the softmax part of dL/dZ: Σ_{a, c ≠ a} coef_a·p_ac·(z_c on row a, z_a on row c), with
// coef_a = k·w_a/T for anchors with positives and 0 otherwise; shift_a = lse_a (+inf where
// coef_a = 0, so that exp gives 0 and never meets a −inf lse). Only the wanted rows: the anchor
// rows (and the symmetric tiles, which feed nothing else) with the features, the GEMMs into
// other columns only for those wanted.
template <typename acc_t>
void add_softmax_grad(const Problem& p, const acc_t* coef, const acc_t* shift, WantedRows wanted,
                      at::Tensor& grad_z) {
  const auto symmetric_tile = [&](Span rows, Span cols, bool diagonal, Scratch<acc_t>& scratch) {
    at::Tensor g = logit_tile(p, rows, cols, scratch.buffer);
    acc_t* values = g.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < rows.size; ++i) {
      const int64_t first = first_column(diagonal, i);
      symmetric_grad_row(values + i * cols.size + first, coef[rows.begin + i],
                         shift[rows.begin + i], coef + cols.begin + first,
                         shift + cols.begin + first, cols.size - first);
    }
    const at::Tensor z_rows = p.z.narrow(0, rows.begin, rows.size);
    if (diagonal) {  // G symmetric: one product covers both sides
      mirror_upper_triangle(values, rows.size);
      grad_z.narrow(0, rows.begin, rows.size).addmm_(g, z_rows);
    } else {
      grad_z.narrow(0, rows.begin, rows.size).addmm_(g, p.z.narrow(0, cols.begin, cols.size));
      grad_z.narrow(0, cols.begin, cols.size).addmm_(g.t(), z_rows);
    }
  };
  const Span others = wanted.others(p);
  const auto one_sided_tile = [&](Span rows, Span cols, Scratch<acc_t>& scratch) {
    const Span kept = overlap(cols, others);  // offset into cols
    if (!wanted.features && kept.size == 0) {
      return;
    }
    at::Tensor g = logit_tile(p, rows, cols, scratch.buffer);
    acc_t* values = g.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < rows.size; ++i) {
      anchor_grad_row(values + i * cols.size, coef[rows.begin + i], shift[rows.begin + i],
                      cols.size);
    }
    if (wanted.features) {
      grad_z.narrow(0, rows.begin, rows.size).addmm_(g, p.z.narrow(0, cols.begin, cols.size));
    }
    if (kept.size > 0) {
      grad_z.narrow(0, cols.begin + kept.begin, kept.size)
          .addmm_(g.t().narrow(0, kept.begin, kept.size), p.z.narrow(0, rows.begin, rows.size));
    }
  };
  const auto symmetric = [&](TilePair pair, Scratch<acc_t>& scratch) {
    for_each_gemm_tile(p, p.anchor_tasks.span(pair.first), p.anchor_tasks.span(pair.second),
                       pair.first == pair.second, [&](Span rows, Span cols, bool diagonal) {
                         symmetric_tile(rows, cols, diagonal, scratch);
                       });
  };
  const auto one_sided = [&](TilePair pair, Scratch<acc_t>& scratch) {
    for_each_gemm_tile(p, p.anchor_tasks.span(pair.first), p.other_tasks.span(pair.second),
                       false, [&](Span rows, Span cols, bool) {
                         one_sided_tile(rows, cols, scratch);
                       });
  };
  if (wanted.features) {
    run_rounds<acc_t>(symmetric_rounds(p.anchor_tasks.count()), p, symmetric);
  }
  run_rounds<acc_t>(one_sided_rounds(p.anchor_tasks.count(), p.other_tasks.count()), p, one_sided);
}

// ---- the positives through class sums -----------------------------------------------------

// dZ −= Σ_a β_a Σ_{c ∈ P_a} (z_c on row a, z_a on row c), β_a = coef_a / |P_a|:
// row a gets β_a·(S[y_a] − z_a); contrast row c gets Q[y_c] − β_c·z_c, Q[y] = Σ_{y_a = y} β_a z_a.
void subtract_positive_grad(const Problem& p, const at::Tensor& coef, at::Tensor& grad_z) {
  const at::Tensor anchors = p.z.narrow(0, 0, p.anchors);
  const at::Tensor anchor_class = p.row_class.narrow(0, 0, p.anchors);
  const at::Tensor beta = (coef / p.positives.clamp_min(1)).unsqueeze(1);
  const at::Tensor weighted =
      at::zeros_like(p.class_sums).index_add_(0, anchor_class, beta * anchors);
  grad_z.narrow(0, 0, p.anchors)
      .sub_(beta * (p.class_sums.index_select(0, anchor_class) - 2 * anchors));
  grad_z.narrow(0, 0, p.rows).sub_(weighted.index_select(0, p.row_class));
}

// ---- entry points --------------------------------------------------------------------------

}  // namespace

std::tuple<at::Tensor, at::Tensor> supcon_loss_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& features, const std::optional<at::Tensor>& labels,
    const std::optional<at::Tensor>& negatives, const at::Tensor& lse, double temperature,
    double base_temperature, std::string contrast_mode, bool normalize, std::string reduction,
    const c10::List<bool>& output_mask) {
  supcon_check_inputs(kBwd, features, labels, negatives, temperature, base_temperature, contrast_mode,
                      reduction);
  const auto [want_features, want_negatives] =
      checked_output_mask<2>(output_mask, kBwd, "features, negatives");
  const WantedRows wanted{want_features, want_negatives && negatives.has_value()};
  const Problem p = make_problem(features, labels, negatives, temperature, base_temperature,
                                 contrast_mode, normalize);
  const auto dtype = p.z.scalar_type();
  AMC_CHECK(lse.dim() == 1 && lse.size(0) == p.anchors && lse.scalar_type() == dtype, kBwd,
            "lse must be the [", p.anchors, "] ", dtype, " statistics of supcon_loss_fwd, got ",
            lse.sizes(), " ", lse.scalar_type());
  at::Tensor grad_features = at::empty({0}, features.options());
  at::Tensor grad_negatives =
      at::empty({0}, negatives.has_value() ? negatives->options() : features.options());
  if (!wanted.features && !wanted.negatives) {
    return {grad_features, grad_negatives};
  }
  const at::Tensor with_positives = p.positives > 0;
  const at::Tensor coef = at::where(
      with_positives, supcon_anchor_weights(grad, p.anchors, reduction, dtype) * (p.scale / temperature),
      at::zeros_like(lse));
  const at::Tensor shift =
      at::where(coef != 0, lse, at::full_like(lse, std::numeric_limits<double>::infinity()));
  at::Tensor grad_z = at::zeros_like(p.z);
  AT_DISPATCH_FLOATING_TYPES(dtype, kBwd, [&] {
    add_softmax_grad<scalar_t>(p, coef.contiguous().const_data_ptr<scalar_t>(),
                               shift.contiguous().const_data_ptr<scalar_t>(), wanted, grad_z);
  });
  // dL/dx of rows [begin, begin + count) in the inputs' dtype, through the normalisation's
  // backward (at ‖x‖ = ε the form of newer torch: the op has no clamp_grad_at_bounds).
  const auto input_grad = [&](int64_t begin, int64_t count) {
    const at::Tensor grad_rows = grad_z.narrow(0, begin, count);
    if (!normalize) {  // a fresh tensor, never a view into grad_z
      return grad_rows.to(features.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    }
    const UnitRows rows{p.z.narrow(0, begin, count), p.norms.narrow(0, begin, count)};
    return unit_rows_backward(rows, grad_rows, features.scalar_type(),
                              /*clamp_grad_at_bounds=*/false);
  };
  if (wanted.features) {
    subtract_positive_grad(p, coef, grad_z);
    grad_features = input_grad(0, p.rows)
                        .view({p.views, p.samples, features.size(2)})
                        .transpose(0, 1)
                        .contiguous();
  }
  if (wanted.negatives) {
    grad_negatives = input_grad(p.rows, p.columns - p.rows);
  }
  return {grad_features, grad_negatives};
}

}  // namespace amc_kernels::cpu::supcon
