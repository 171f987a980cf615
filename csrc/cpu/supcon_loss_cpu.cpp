// supcon_loss_fwd and supcon_loss_bwd on CPU (docs/design.md#23-supcon_loss).
//
// Formula. The contrast rows are the views stacked view-major (row r = v·N + n, R = V·N rows),
// then the M negatives: C = R + M rows z_r, L2-normalised (z / max(‖z‖, ε), ε = norm_eps of
// math.h) by unit_rows (tile_utils_cpu.h, F.normalize's norms) when `normalize`.
// The anchors are rows [0, A): A = R ("all") or N ("one", view 0). With l_ac = ⟨z_a, z_c⟩ / T,
//   lse_a  = log Σ_{c ≠ a} exp(l_ac)                       (every contrast row and negative),
//   |P_a|  = V·count[y_a] − 1                               (same-class contrast rows but a),
//   loss_a = −k·(⟨z_a, S[y_a] − z_a⟩ / (T·|P_a|) − lse_a)  when |P_a| > 0, else exactly 0,
// with k = T / T_base, y the dense class ids of the labels (the sample index when labels is
// None) and S[y] the sum of the contrast rows of class y: the positives reduce to per-class sums,
// O(N·D). The output is the mean over the A anchors, the sum, or [A]; lse [A] is saved.
// Backward: supcon_loss_backward_cpu.cpp.
//
// Mapping. The anchor × anchor block of the logits is symmetric. Its rows are cut into 2·threads
// task tiles, and each task tile pair I ≤ J is one task; the anchor × other-column block (the
// negatives, and views 1.. in "one" mode) is cut into as many anchor × column task tiles. Tasks
// run in rounds in which no task tile appears twice (a round-robin tournament over the anchor
// task tiles, then a cyclic anchor × column schedule), the tasks of a round in parallel
// (at::parallel_for): every row's statistics and gradient are updated by one thread at a time, in
// the fixed order of the rounds, with no atomics, no per-thread copies of O(N) state and at most
// 4·threads rounds (barriers) per pass. A task walks its block in GEMM tiles of at most 256 × 256,
// each one single-threaded BLAS GEMM L = Z_I Z_Jᵀ / T whose rows feed the online log-sum-exp of
// the rows of I and whose columns (symmetric blocks) that of the rows of J. A GEMM tile on the
// diagonal uses its strict upper triangle for both, so that every pair {a, c} is one logit value
// in both directions and in both passes (BLAS does not return an exactly symmetric Z_I Z_Iᵀ, and
// large logits would turn that into inconsistent softmaxes). Epilogues are SIMD loops (x86-64-v4,
// x86-64-v3 or baseline clones) over the rows of a tile, with the exponentials max-subtracted.
// Small problems (A·C·D < 2^20) run on the calling thread in GEMM tiles of up to 1024 rows.
// Memory: the C × D rows (and their stacked copy), their gradient and one tile per thread; never
// an A × C matrix. Accumulation: fp32 (fp64 for fp64 inputs); fp16 and bf16 rows are converted
// once, as Z is built.
#include "supcon_loss_cpu.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_supcon_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"

namespace amc_kernels::cpu {
namespace supcon {
namespace {

constexpr const char* kFwd = "supcon_loss_fwd";
// Rows and columns of one GEMM tile: 256 × 256 fp32 logits stay in a core's L2 cache.
constexpr int64_t kGemmTile = 256;
// Below this many multiply-adds in the logits (A·C·D) the work runs on the calling thread in
// GEMM tiles of up to kSerialGemmTile (one tile when A ≤ 1024): a few larger GEMM calls instead
// of parallel rounds that would cost more than they save.
constexpr int64_t kParallelWork = int64_t(1) << 20;
constexpr int64_t kSerialGemmTile = 1024;

// Dense class ids of the samples ([N] int64) and their number.
std::tuple<at::Tensor, int64_t> sample_classes(const std::optional<at::Tensor>& labels,
                                               int64_t samples, const at::TensorOptions& options) {
  if (!labels.has_value()) {
    return {at::arange(samples, options.dtype(at::kLong)), samples};
  }
  const auto [values, inverse] = at::_unique(*labels, /*sorted=*/true, /*return_inverse=*/true);
  return {inverse.to(at::kLong), values.size(0)};
}

}  // namespace

// ---- the problem ---------------------------------------------------------------------------

Problem make_problem(const at::Tensor& features, const std::optional<at::Tensor>& labels,
                     const std::optional<at::Tensor>& negatives, double temperature,
                     double base_temperature, const std::string& contrast_mode,
                     bool normalize) {
  Problem p;
  p.samples = features.size(0);
  p.views = features.size(1);
  const int64_t dim = features.size(2);
  p.rows = p.samples * p.views;
  p.anchors = contrast_mode == "all" ? p.rows : p.samples;
  p.columns = p.rows + (negatives.has_value() ? negatives->size(0) : 0);
  p.temperature = temperature;
  p.scale = temperature / base_temperature;
  const auto options = features.options().dtype(compute_dtype(features.scalar_type()));
  const at::Tensor contrast = features.transpose(0, 1).reshape({p.rows, dim});  // view-major
  const at::Tensor stacked = negatives.has_value() ? at::cat({contrast, *negatives}) : contrast;
  if (normalize) {
    const UnitRows unit = unit_rows(stacked);
    p.z = unit.unit;
    p.norms = unit.norm;
  } else {
    p.z = stacked.to(options.dtype()).contiguous();
  }
  const auto [sample_class, classes] = sample_classes(labels, p.samples, features.options());
  p.row_class = sample_class.repeat({p.views});
  const at::Tensor class_size = at::bincount(sample_class, {}, classes);
  const at::Tensor anchor_class = p.row_class.narrow(0, 0, p.anchors);
  p.positives = (class_size.index_select(0, anchor_class) * p.views - 1).to(options.dtype());
  p.class_sums = at::zeros({classes, dim}, options)
                     .index_add_(0, p.row_class, p.z.narrow(0, 0, p.rows));
  p.parallel = p.anchors * p.columns * dim >= kParallelWork;
  // 2·threads task tiles: a round of the tournament gives each thread one task pair's worth.
  p.anchor_tasks = Tiling::split(0, p.anchors, p.parallel ? 2 * at::get_num_threads() : 1);
  p.other_tasks =
      Tiling::split(p.anchors, p.columns, std::max<int64_t>(1, p.anchor_tasks.count()));
  // No larger than the task tiles, so that the scratch tile fits the problem.
  p.gemm_tile = std::min(p.parallel ? kGemmTile : kSerialGemmTile,
                         std::max(p.anchor_tasks.tile, p.other_tasks.tile));
  return p;
}

// ---- task schedule -------------------------------------------------------------------------

std::vector<Round> symmetric_rounds(int64_t tiles) {
  std::vector<Round> rounds(1);
  for (int64_t t = 0; t < tiles; ++t) {
    rounds[0].push_back({t, t});
  }
  const int64_t slots = tiles + tiles % 2;
  const int64_t cycle = slots - 1;
  for (int64_t r = 0; r < cycle; ++r) {
    Round round;
    const auto add = [&](int64_t a, int64_t b) {
      if (a < tiles && b < tiles) {
        round.push_back({std::min(a, b), std::max(a, b)});
      }
    };
    add(cycle, r);
    for (int64_t k = 1; k < slots / 2; ++k) {
      add((r + k) % cycle, (r - k + cycle) % cycle);
    }
    rounds.push_back(std::move(round));
  }
  return rounds;
}

std::vector<Round> one_sided_rounds(int64_t anchor_tiles, int64_t other_tiles) {
  const int64_t period = std::max(anchor_tiles, other_tiles);
  std::vector<Round> rounds;
  for (int64_t r = 0; anchor_tiles > 0 && other_tiles > 0 && r < period; ++r) {
    Round round;
    for (int64_t i = 0; i < anchor_tiles; ++i) {
      const int64_t k = (i + r) % period;
      if (k < other_tiles) {
        round.push_back({i, k});
      }
    }
    rounds.push_back(std::move(round));
  }
  return rounds;
}

at::Tensor logit_tile(const Problem& p, Span rows, Span cols, at::Tensor& buffer) {
  at::Tensor tile = buffer.narrow(0, 0, rows.size * cols.size).view({rows.size, cols.size});
  at::addmm_out(tile, tile, p.z.narrow(0, rows.begin, rows.size),
                p.z.narrow(0, cols.begin, cols.size).t(), /*beta=*/0, 1.0 / p.temperature);
  return tile;
}

namespace {

// ---- forward: online log-sum-exp -----------------------------------------------------------

// max_j row[j] (−inf for an empty row); column_max[j] ← max(column_max[j], row[j]).
template <typename acc_t>
AMC_SIMD_CLONES acc_t row_max_and_column_max(const acc_t* row, acc_t* column_max, int64_t n) {
  acc_t top = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = row[j];
    top = v > top ? v : top;
    column_max[j] = v > column_max[j] ? v : column_max[j];
  }
  return top;
}

template <typename acc_t>
AMC_SIMD_CLONES acc_t row_max(const acc_t* row, int64_t n) {
  acc_t top = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < n; ++j) {
    top = row[j] > top ? row[j] : top;
  }
  return top;
}

// Σ_j exp(row[j] − shift); column_sum[j] += exp(row[j] − column_shift[j]).
template <typename acc_t>
AMC_SIMD_CLONES acc_t row_and_column_exp_sums(const acc_t* row, acc_t shift,
                                              const acc_t* column_shift, acc_t* column_sum,
                                              int64_t n) {
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    total += simd_exp(row[j] - shift);
    column_sum[j] += simd_exp(row[j] - column_shift[j]);
  }
  return total;
}

template <typename acc_t>
AMC_SIMD_CLONES acc_t row_exp_sum(const acc_t* row, acc_t shift, int64_t n) {
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    total += simd_exp(row[j] - shift);
  }
  return total;
}

// Merges every row of a one-sided tile into the states of its rows.
template <typename acc_t>
void merge_rows(const acc_t* tile, Span rows, int64_t cols, OnlineLogSumExp<acc_t>* states) {
  for (int64_t i = 0; i < rows.size; ++i) {
    const acc_t* row = tile + i * cols;
    const acc_t top = row_max(row, cols);
    states[rows.begin + i].merge({top, row_exp_sum(row, top, cols)});
  }
}

// Merges the rows of a symmetric tile into the states of its rows, and its columns into the
// states of its columns (a diagonal tile: its strict upper triangle). An empty row or column
// segment merges (−inf, 0), which changes nothing.
template <typename acc_t>
void merge_rows_and_columns(const acc_t* tile, bool diagonal, Span rows, Span cols,
                            Scratch<acc_t>& scratch, OnlineLogSumExp<acc_t>* states) {
  acc_t* top = scratch.row_max.data();
  acc_t* column_max = scratch.column_max.data();
  acc_t* column_sum = scratch.column_sum.data();
  std::fill(column_max, column_max + cols.size, -std::numeric_limits<acc_t>::infinity());
  std::fill(column_sum, column_sum + cols.size, acc_t(0));
  for (int64_t i = 0; i < rows.size; ++i) {
    const int64_t first = first_column(diagonal, i);
    top[i] = row_max_and_column_max(tile + i * cols.size + first, column_max + first,
                                    cols.size - first);
  }
  for (int64_t i = 0; i < rows.size; ++i) {
    const int64_t first = first_column(diagonal, i);
    const acc_t sum = row_and_column_exp_sums(tile + i * cols.size + first, top[i],
                                              column_max + first, column_sum + first,
                                              cols.size - first);
    states[rows.begin + i].merge({top[i], sum});
  }
  for (int64_t j = 0; j < cols.size; ++j) {
    states[cols.begin + j].merge({column_max[j], column_sum[j]});
  }
}

// lse_a = log Σ_{c ≠ a} exp(l_ac), [A] (−inf for an anchor that is the only row).
template <typename acc_t>
at::Tensor anchor_log_sum_exp(const Problem& p) {
  std::vector<OnlineLogSumExp<acc_t>> states(p.anchors, OnlineLogSumExp<acc_t>::empty());
  OnlineLogSumExp<acc_t>* state = states.data();
  const auto symmetric = [&](TilePair pair, Scratch<acc_t>& scratch) {
    for_each_gemm_tile(p, p.anchor_tasks.span(pair.first), p.anchor_tasks.span(pair.second),
                       pair.first == pair.second, [&](Span rows, Span cols, bool diagonal) {
                         const at::Tensor logits = logit_tile(p, rows, cols, scratch.buffer);
                         merge_rows_and_columns(logits.const_data_ptr<acc_t>(), diagonal, rows,
                                                cols, scratch, state);
                       });
  };
  const auto one_sided = [&](TilePair pair, Scratch<acc_t>& scratch) {
    for_each_gemm_tile(p, p.anchor_tasks.span(pair.first), p.other_tasks.span(pair.second),
                       false, [&](Span rows, Span cols, bool) {
                         const at::Tensor logits = logit_tile(p, rows, cols, scratch.buffer);
                         merge_rows(logits.const_data_ptr<acc_t>(), rows, cols.size, state);
                       });
  };
  run_rounds<acc_t>(symmetric_rounds(p.anchor_tasks.count()), p, symmetric);
  run_rounds<acc_t>(one_sided_rounds(p.anchor_tasks.count(), p.other_tasks.count()), p, one_sided);
  at::Tensor lse = at::empty({p.anchors}, p.z.options());
  acc_t* out = lse.mutable_data_ptr<acc_t>();
  for (int64_t a = 0; a < p.anchors; ++a) {
    out[a] = states[a].value();
  }
  return lse;
}

// ---- the positives through class sums -----------------------------------------------------

// ⟨z_a, S[y_a] − z_a⟩ / T for every anchor, [A].
at::Tensor positive_logit_sums(const Problem& p) {
  const at::Tensor anchors = p.z.narrow(0, 0, p.anchors);
  const at::Tensor others = p.class_sums.index_select(0, p.row_class.narrow(0, 0, p.anchors));
  return ((others - anchors) * anchors).sum(1) / p.temperature;
}

// ---- entry points --------------------------------------------------------------------------

at::Tensor reduce(const at::Tensor& per_anchor, const std::string& reduction) {
  if (reduction == "none") {
    return per_anchor;
  }
  if (reduction == "sum" || per_anchor.numel() == 0) {
    return per_anchor.sum();
  }
  return per_anchor.mean();
}

std::tuple<at::Tensor, at::Tensor> supcon_loss_fwd_cpu(
    const at::Tensor& features, const std::optional<at::Tensor>& labels,
    const std::optional<at::Tensor>& negatives, double temperature, double base_temperature,
    std::string contrast_mode, bool normalize, std::string reduction) {
  supcon_check_inputs(kFwd, features, labels, negatives, temperature, base_temperature, contrast_mode,
                      reduction);
  const Problem p = make_problem(features, labels, negatives, temperature, base_temperature,
                                 contrast_mode, normalize);
  at::Tensor lse;
  AT_DISPATCH_FLOATING_TYPES(p.z.scalar_type(), kFwd,
                             [&] { lse = anchor_log_sum_exp<scalar_t>(p); });
  const at::Tensor mean_positive = positive_logit_sums(p) / p.positives.clamp_min(1);
  const at::Tensor per_anchor =
      at::where(p.positives > 0, -p.scale * (mean_positive - lse), at::zeros_like(lse));
  return {reduce(per_anchor, reduction), lse};
}

}  // namespace

}  // namespace supcon

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("supcon_loss_fwd", &supcon::supcon_loss_fwd_cpu);
  m.impl("supcon_loss_bwd", &supcon::supcon_loss_bwd_cpu);
}

}  // namespace amc_kernels::cpu
