// What the two halves of supcon_loss on CPU share (supcon_loss_cpu.cpp: the inputs, the problem,
// the forward and the registration; supcon_loss_backward_cpu.cpp: the backward): the problem
// both passes derive from the inputs, the schedule of tasks in rounds, the per-thread scratch and
// the walk of a task's block in GEMM tiles of logits.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "tile_utils_cpu.h"

namespace amc_kernels::cpu::supcon {

// ---- inputs --------------------------------------------------------------------------------

// The checks of both ops: supcon_check_inputs (amc_kernels/checks_supcon_loss.h).

// ---- the problem ---------------------------------------------------------------------------

// Rows [begin, end) cut into tiles of `tile` rows (the last one shorter).
struct Tiling {
  int64_t begin;
  int64_t end;
  int64_t tile;

  // [begin, end) in `parts` tiles of equal size (fewer when there are fewer rows).
  static Tiling split(int64_t begin, int64_t end, int64_t parts) {
    return {begin, end, std::max<int64_t>(1, (end - begin + parts - 1) / parts)};
  }

  int64_t count() const { return tile_count(end - begin, tile); }
  Span span(int64_t index) const {
    const Span local = tile_span(index, end - begin, tile);
    return {begin + local.begin, local.size};
  }
};

// Everything both passes derive from the inputs: the rows, their classes and the tiling.
struct Problem {
  int64_t samples;     // N
  int64_t views;       // V
  int64_t rows;        // R = V·N contrast rows
  int64_t anchors;     // A
  int64_t columns;     // C = R + M
  double temperature;  // T
  double scale;        // k = T / T_base
  at::Tensor z;           // [C, D] compute dtype: contrast rows, then negatives (unit if normalize)
  at::Tensor norms;       // [C] their norms before normalisation (if normalize)
  at::Tensor row_class;   // [R] int64 dense class id of each contrast row
  at::Tensor positives;   // [A] compute dtype |P_a|
  at::Tensor class_sums;  // [K, D] S[y]
  bool parallel;          // whether the tasks of a round run in parallel
  Tiling anchor_tasks;    // [0, A) in task tiles
  Tiling other_tasks;     // [A, C) in as many task tiles
  int64_t gemm_tile;      // rows and columns of a GEMM tile
};

Problem make_problem(const at::Tensor& features, const std::optional<at::Tensor>& labels,
                     const std::optional<at::Tensor>& negatives, double temperature,
                     double base_temperature, const std::string& contrast_mode,
                     bool normalize);

// ---- task schedule -------------------------------------------------------------------------

// Tasks that share no task tile: pairs of anchor task tiles (the symmetric block), or an anchor
// task tile and an other-column task tile.
using Round = std::vector<TilePair>;

// Every anchor task tile pair I ≤ J once, in rounds in which no tile appears twice: the
// diagonal pairs, then the circle method (slot `cycle` fixed, the others rotating; a bye when odd).
std::vector<Round> symmetric_rounds(int64_t tiles);

// Every (anchor tile, other tile) pair once, in rounds in which no tile appears twice: round r
// pairs anchor tile i with other tile (i + r) mod P, when it exists, P the longer tile count.
std::vector<Round> one_sided_rounds(int64_t anchor_tiles, int64_t other_tiles);

// The scratch of one thread: a GEMM tile of logits and its per-row and per-column maxima and
// sums.
template <typename acc_t>
struct Scratch {
  at::Tensor buffer;
  std::vector<acc_t> row_max;
  std::vector<acc_t> column_max;
  std::vector<acc_t> column_sum;

  Scratch(int64_t tile, const at::TensorOptions& options)
      : buffer(at::empty({tile * tile}, options)),
        row_max(tile),
        column_max(tile),
        column_sum(tile) {}
};

// Runs task(pair, scratch) for every pair: the rounds one after the other, the pairs of a round
// in parallel (or on this thread when the problem is small).
template <typename acc_t, typename Task>
void run_rounds(const std::vector<Round>& rounds, const Problem& p, const Task& task) {
  const int64_t tile = p.gemm_tile;
  for (const Round& round : rounds) {
    const int64_t tasks = static_cast<int64_t>(round.size());
    at::parallel_for(0, tasks, p.parallel ? 1 : tasks, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> scratch(tile, p.z.options());
      for (int64_t t = begin; t < end; ++t) {
        task(round[t], scratch);
      }
    });
  }
}

// L = Z[rows]·Z[cols]ᵀ / T as a contiguous rows.size × cols.size matrix in the scratch buffer.
at::Tensor logit_tile(const Problem& p, Span rows, Span cols, at::Tensor& buffer);

// Calls gemm_tile(rows, cols, diagonal) for every GEMM tile of a task's block: its rows and
// columns in spans of at most p.gemm_tile; for a task on the diagonal (rows = cols), only the
// tiles on or above the diagonal, `diagonal` marking a span with itself.
template <typename Fn>
void for_each_gemm_tile(const Problem& p, Span rows, Span cols, bool diagonal_task,
                        const Fn& gemm_tile) {
  const Tiling row_tiles{rows.begin, rows.begin + rows.size, p.gemm_tile};
  const Tiling col_tiles{cols.begin, cols.begin + cols.size, p.gemm_tile};
  for (int64_t i = 0; i < row_tiles.count(); ++i) {
    for (int64_t j = diagonal_task ? i : 0; j < col_tiles.count(); ++j) {
      gemm_tile(row_tiles.span(i), col_tiles.span(j), diagonal_task && i == j);
    }
  }
}

// The first column of row i that a GEMM tile uses: past the diagonal for a span with itself.
inline int64_t first_column(bool diagonal, int64_t i) { return diagonal ? i + 1 : 0; }

// ---- the backward entry point --------------------------------------------------------------

// supcon_loss_bwd (supcon_loss_backward_cpu.cpp), registered with supcon_loss_fwd in
// supcon_loss_cpu.cpp.
std::tuple<at::Tensor, at::Tensor> supcon_loss_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& features, const std::optional<at::Tensor>& labels,
    const std::optional<at::Tensor>& negatives, const at::Tensor& lse, double temperature,
    double base_temperature, std::string contrast_mode, bool normalize, std::string reduction,
    const c10::List<bool>& output_mask);

}  // namespace amc_kernels::cpu::supcon
