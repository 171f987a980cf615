// CPU building blocks of the row kernels (angular_distance, amc_loss, supcon_loss): row spans
// for tiling, the schedules of tiles and of symmetric tile pairs over the threads, the row
// normalisation of F.normalize and its backward, the cosine tile GEMM, and the macro that
// compiles a row loop per SIMD width.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

// A row loop compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 with FMA) and the baseline ISA;
// the loader picks the widest one the CPU has (gcc function multiversioning). Loop bodies are
// branch-free so that gcc vectorises them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define AMC_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AMC_SIMD_CLONES
#endif

namespace amc_kernels::cpu {

// fp64 for fp64, fp32 for fp32, fp16 and bf16.
at::ScalarType compute_dtype(at::ScalarType dtype);

// Rows [begin, begin + size) of a matrix cut into tiles of `tile` rows.
struct Span {
  int64_t begin;
  int64_t size;
};

inline int64_t tile_count(int64_t rows, int64_t tile) { return (rows + tile - 1) / tile; }

inline Span tile_span(int64_t index, int64_t rows, int64_t tile) {
  const int64_t begin = index * tile;
  return {begin, std::min(tile, rows - begin)};
}

// ---- symmetric tile pairs -------------------------------------------------------------------

// Two tiles: I ≤ J of a symmetric N × N matrix, or a row tile and a column tile.
struct TilePair {
  int64_t first;
  int64_t second;
};

// Every tile pair I ≤ J once, row by row.
std::vector<TilePair> tile_pairs(int64_t tiles);

// Rows of the square tiles over N rows: 256, smaller (down to 64) when N is too small to give
// every thread a few tile pairs.
int64_t pair_tile_rows(int64_t n);

// Runs task(i, scratch) for every i in [0, count) on the at::parallel_for threads, each thread
// claiming the next i when it is free: a slow or preempted thread holds the others up by one
// task at most. For tasks that write disjoint outputs. Each thread has its own scratch, from
// make_scratch().
template <typename MakeScratch, typename Task>
void parallel_claim(int64_t count, const MakeScratch& make_scratch, const Task& task) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(count, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t /*begin*/, int64_t /*end*/) {
    auto scratch = make_scratch();
    for (int64_t i = next++; i < count; i = next++) {
      task(i, scratch);
    }
  });
}

// How many chunks for_each_tile_pair splits `tiles` tiles' pairs into: one per thread.
inline int64_t tile_pair_chunks(int64_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles * (tiles + 1) / 2));
}

// Runs task(pair, chunk, scratch) for every tile pair, the pairs cut into tile_pair_chunks(tiles)
// contiguous runs, one per thread, in one parallel region. A task writes only to its chunk's
// accumulators (the caller keeps tile_pair_chunks(tiles) of them and sums them in chunk order):
// race-free, and the result depends on the thread count only. No barrier between pairs: on an
// oversubscribed machine each barrier can cost a scheduler time slice. Each thread has its own
// scratch, `buffers` × tile × tile.
template <typename Task>
void for_each_tile_pair(int64_t tiles, int64_t tile, int64_t buffers,
                        const at::TensorOptions& options, const Task& task) {
  const std::vector<TilePair> pairs = tile_pairs(tiles);
  const auto count = static_cast<int64_t>(pairs.size());
  const int64_t chunks = tile_pair_chunks(tiles);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor scratch = at::empty({buffers, tile, tile}, options);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t p = chunk * count / chunks; p < (chunk + 1) * count / chunks; ++p) {
        task(pairs[p], chunk, scratch);
      }
    }
  });
}

// ---- unit rows -------------------------------------------------------------------------------

// x̂ = x / max(‖x‖, ε) (ε = norm_eps, math.h) row by row in the compute dtype (contiguous),
// and the norms ‖x‖.
struct UnitRows {
  at::Tensor unit;
  at::Tensor norm;
};

UnitRows unit_rows(const at::Tensor& x);

// dL/dx from dL/dx̂ (compute dtype, contiguous), cast to `dtype`: the backward of unit_rows.
// clamp_grad_at_bounds: whether torch's clamp_min passes the gradient at ‖x‖ = ε.
at::Tensor unit_rows_backward(const UnitRows& rows, const at::Tensor& grad_unit,
                              at::ScalarType dtype, bool clamp_grad_at_bounds);

// out = â[rows] · b̂[cols]ᵀ: one single-threaded BLAS GEMM (when called inside at::parallel_for)
// into `out`, a rows.size × cols.size view with unit column stride and any row stride.
void cosine_tile(const at::Tensor& a_unit, Span rows, const at::Tensor& b_unit, Span cols,
                 at::Tensor& out);

}  // namespace amc_kernels::cpu
