// angular_distance_fwd and angular_distance_bwd on CPU (docs/design.md#21-angular_distance).
// Formula: θ_ij = arccos(clamp(⟨x̂_i, ŷ_j⟩, −1 + δ, 1 − δ)), x̂ = x / max(‖x‖, ε), with
//   ε = norm_eps and δ from cosine_bound (math.h); y = None means y = x. Backward: G = grad ⊙
//   dθ/dc (zero outside the clamp; at its bounds as the running torch's clamp, see
//   clamped_arccos_grad), dx̂ = G ŷ, dŷ = Gᵀ x̂, then the backward of the normalisation; the
//   GEMMs and the normalisation backward of a gradient that output_mask leaves out are skipped.
// Mapping with y: the unit rows are computed once (O((N + M)·D)). Forward: the threads claim
//   kRowTile × kColTile tiles of θ in turn (parallel_claim); one BLAS GEMM writes the tile's
//   cosines into the output (into a per-thread fp32 tile for fp16/bf16 outputs), then the
//   vectorised clamped arccos runs over the tile while it is in cache. Backward: at::parallel_for
//   over chunks of row tiles, one per thread; a chunk recomputes the cosine tiles of its rows (θ
//   is not inverted: the clamp mask needs c itself), turns each into G in place, adds G ŷ_J to its
//   own rows of dx̂ and Gᵀ x̂_I to a private dŷ; the private dŷ are summed at the end
//   (O(threads·M·D)).
// Mapping with y = None: θ is symmetric, so only the square tile pairs I ≤ J are computed (half
//   the GEMMs). Forward: the threads claim the pairs in turn; one GEMM and arccos per pair,
//   written to θ_IJ and, transposed, to θ_JI. Backward: dx̂ = (G + Gᵀ) x̂; per pair
//   H = dθ/dc(C_IJ) ⊙ (grad_IJ + grad_JIᵀ), then dx̂_I += H x̂_J and dx̂_J += Hᵀ x̂_I into the
//   accumulator of the thread's run of pairs (for_each_tile_pair; O(threads·N·D)), summed at
//   the end. grad_y is empty.
// Accumulation: fp32 (fp64 for fp64 inputs); θ and the gradients are cast to x's dtype.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_angular_distance.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "tile_utils_cpu.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kFwd = "angular_distance_fwd";
constexpr const char* kBwd = "angular_distance_bwd";
constexpr int64_t kRowTile = 128;
constexpr int64_t kColTile = 512;

template <typename scalar_t, typename acc_t>
void cast_row(const acc_t* values, scalar_t* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<scalar_t>(values[j]);
  }
}

// values[j] ← arccos(clamp(values[j], −1 + δ, 1 − δ)).
template <typename acc_t>
AMC_SIMD_CLONES void clamped_arccos_row(acc_t* values, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    values[j] = clamped_arccos_simd(values[j]);
  }
}

// cosines[j] ← grad[j] · dθ/dc(cosines[j]).
template <typename acc_t, typename scalar_t>
AMC_SIMD_CLONES void arccos_grad_row(acc_t* cosines, const scalar_t* grad, bool grad_at_bounds,
                                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    cosines[j] = static_cast<acc_t>(grad[j]) * clamped_arccos_grad(cosines[j], grad_at_bounds);
  }
}

// cosines[j] ← (grad[j] + mirrored_grad[j]) · dθ/dc(cosines[j]).
template <typename acc_t, typename scalar_t>
AMC_SIMD_CLONES void symmetric_arccos_grad_row(acc_t* cosines, const scalar_t* grad,
                                               const acc_t* mirrored_grad, bool grad_at_bounds,
                                               int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    cosines[j] = (static_cast<acc_t>(grad[j]) + mirrored_grad[j]) *
                 clamped_arccos_grad(cosines[j], grad_at_bounds);
  }
}

// dst[j][i] = src[i][j] for a rows × cols block (row strides src_ld and dst_ld), cast to dst_t;
// in 16 × 16 blocks, so that both the reads and the writes stay within a few cache lines.
template <typename src_t, typename dst_t>
void transpose_block(const src_t* src, int64_t src_ld, int64_t rows, int64_t cols, dst_t* dst,
                     int64_t dst_ld) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      for (int64_t j = j0; j < std::min(j0 + kBlock, cols); ++j) {
        for (int64_t i = i0; i < std::min(i0 + kBlock, rows); ++i) {
          dst[j * dst_ld + i] = static_cast<dst_t>(src[i * src_ld + j]);
        }
      }
    }
  }
}

// θ = out, tile by tile. fp32/fp64 outputs take the GEMM directly; fp16/bf16 go through `scratch`.
template <typename scalar_t>
void angular_forward_tiles(const at::Tensor& x_unit, const at::Tensor& y_unit, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<scalar_t, acc_t>;
  const int64_t rows = x_unit.size(0);
  const int64_t cols = y_unit.size(0);
  const int64_t col_tiles = tile_count(cols, kColTile);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const auto make_scratch = [&] {
    return in_place ? at::Tensor() : at::empty({kRowTile, kColTile}, x_unit.options());
  };
  const auto task = [&](int64_t index, const at::Tensor& scratch) {
    const Span r = tile_span(index / col_tiles, rows, kRowTile);
    const Span c = tile_span(index % col_tiles, cols, kColTile);
    at::Tensor tile = in_place ? out.narrow(0, r.begin, r.size).narrow(1, c.begin, c.size)
                               : scratch.narrow(0, 0, r.size).narrow(1, 0, c.size);
    cosine_tile(x_unit, r, y_unit, c, tile);
    acc_t* values = tile.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < r.size; ++i) {
      acc_t* row = values + i * tile.stride(0);
      clamped_arccos_row(row, c.size);
      if constexpr (!in_place) {
        cast_row(row, out_data + (r.begin + i) * cols + c.begin, c.size);
      }
    }
  };
  parallel_claim(tile_count(rows, kRowTile) * col_tiles, make_scratch, task);
}

// y = None: θ = out for the symmetric matrix, one GEMM per tile pair I ≤ J.
template <typename scalar_t>
void self_forward_tiles(const at::Tensor& unit, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t n = unit.size(0);
  const int64_t tile = pair_tile_rows(n);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const auto task = [&](TilePair pair, const at::Tensor& scratch) {
    const Span r = tile_span(pair.first, n, tile);
    const Span c = tile_span(pair.second, n, tile);
    at::Tensor cosines = scratch[0].narrow(0, 0, r.size).narrow(1, 0, c.size);
    cosine_tile(unit, r, unit, c, cosines);
    acc_t* values = cosines.mutable_data_ptr<acc_t>();
    const int64_t ld = cosines.stride(0);
    for (int64_t i = 0; i < r.size; ++i) {
      clamped_arccos_row(values + i * ld, c.size);
      cast_row(values + i * ld, out_data + (r.begin + i) * n + c.begin, c.size);
    }
    if (pair.first != pair.second) {
      transpose_block(values, ld, r.size, c.size, out_data + c.begin * n + r.begin, n);
    }
  };
  // Each pair writes only its own blocks θ_IJ and θ_JI: the threads may take them in any order.
  const std::vector<TilePair> pairs = tile_pairs(tile_count(n, tile));
  const auto make_scratch = [&] { return at::empty({1, tile, tile}, unit.options()); };
  parallel_claim(static_cast<int64_t>(pairs.size()), make_scratch,
                 [&](int64_t p, const at::Tensor& scratch) { task(pairs[p], scratch); });
}

// y = None: dx̂ = (G + Gᵀ) x̂ ([N, D], returned), one cosine GEMM per tile pair I ≤ J.
template <typename scalar_t>
at::Tensor self_backward_tiles(const at::Tensor& grad, const at::Tensor& unit,
                               bool clamp_grad_at_bounds) {
  using acc_t = acc_type<scalar_t>;
  const int64_t n = unit.size(0);
  const int64_t tile = pair_tile_rows(n);
  const int64_t tiles = tile_count(n, tile);
  at::Tensor parts = at::zeros({tile_pair_chunks(tiles), n, unit.size(1)}, unit.options());
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int64_t grad_stride = grad.stride(0);
  const auto task = [&](TilePair pair, int64_t chunk, const at::Tensor& scratch) {
    const Span r = tile_span(pair.first, n, tile);
    const Span c = tile_span(pair.second, n, tile);
    at::Tensor h = scratch[0].narrow(0, 0, r.size).narrow(1, 0, c.size);
    cosine_tile(unit, r, unit, c, h);
    acc_t* mirrored = scratch[1].mutable_data_ptr<acc_t>();  // grad_JIᵀ, row stride `tile`
    transpose_block(grad_data + c.begin * grad_stride + r.begin, grad_stride, c.size, r.size,
                    mirrored, tile);
    acc_t* values = h.mutable_data_ptr<acc_t>();
    for (int64_t i = 0; i < r.size; ++i) {
      symmetric_arccos_grad_row(values + i * h.stride(0),
                                grad_data + (r.begin + i) * grad_stride + c.begin,
                                mirrored + i * tile, clamp_grad_at_bounds, c.size);
    }
    const at::Tensor part = parts.select(0, chunk);
    part.narrow(0, r.begin, r.size).addmm_(h, unit.narrow(0, c.begin, c.size));
    if (pair.first != pair.second) {
      part.narrow(0, c.begin, c.size).addmm_(h.t(), unit.narrow(0, r.begin, r.size));
    }
  };
  for_each_tile_pair(tiles, tile, 2, unit.options(), task);
  return parts.sum(0);
}

// (dx̂ [N, D], dŷ [M, D]) for the upstream gradient `grad`, whose rows are contiguous; an
// undefined tensor for one not wanted.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> angular_backward_tiles(const at::Tensor& grad,
                                                          const at::Tensor& x_unit,
                                                          const at::Tensor& y_unit,
                                                          bool clamp_grad_at_bounds, bool want_x,
                                                          bool want_y) {
  const int64_t rows = x_unit.size(0);
  const int64_t cols = y_unit.size(0);
  const int64_t row_tiles = tile_count(rows, kRowTile);
  const int64_t col_tiles = tile_count(cols, kColTile);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), row_tiles));
  at::Tensor x_grad_unit = want_x ? at::zeros_like(x_unit) : at::Tensor();
  at::Tensor y_grad_parts =
      want_y ? at::zeros({chunks, cols, y_unit.size(1)}, y_unit.options()) : at::Tensor();
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int64_t grad_stride = grad.stride(0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scratch = at::empty({kRowTile, kColTile}, x_unit.options());
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      at::Tensor y_grad_part = want_y ? y_grad_parts[chunk] : at::Tensor();
      for (int64_t ti = chunk * row_tiles / chunks; ti < (chunk + 1) * row_tiles / chunks; ++ti) {
        const Span r = tile_span(ti, rows, kRowTile);
        at::Tensor x_grad_rows = want_x ? x_grad_unit.narrow(0, r.begin, r.size) : at::Tensor();
        for (int64_t tj = 0; tj < col_tiles; ++tj) {
          const Span c = tile_span(tj, cols, kColTile);
          at::Tensor g = scratch.narrow(0, 0, r.size).narrow(1, 0, c.size);
          cosine_tile(x_unit, r, y_unit, c, g);
          auto* values = g.mutable_data_ptr<acc_type<scalar_t>>();
          for (int64_t i = 0; i < r.size; ++i) {
            arccos_grad_row(values + i * g.stride(0),
                            grad_data + (r.begin + i) * grad_stride + c.begin,
                            clamp_grad_at_bounds, c.size);
          }
          if (want_x) {
            x_grad_rows.addmm_(g, y_unit.narrow(0, c.begin, c.size));
          }
          if (want_y) {
            y_grad_part.narrow(0, c.begin, c.size).addmm_(g.t(), x_unit.narrow(0, r.begin, r.size));
          }
        }
      }
    }
  });
  return {x_grad_unit, want_y ? y_grad_parts.sum(0) : at::Tensor()};
}

at::Tensor angular_distance_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y) {
  angular_distance_check_inputs(kFwd, x, y);
  const at::Tensor x_unit = unit_rows(x).unit;
  const at::Tensor y_unit = y.has_value() ? unit_rows(*y).unit : x_unit;
  at::Tensor out = at::empty({x.size(0), y_unit.size(0)}, x.options());
  AMC_DISPATCH_FLOATING(x.scalar_type(), kFwd, [&] {
    if (y.has_value()) {
      angular_forward_tiles<scalar_t>(x_unit, y_unit, out);
    } else {
      self_forward_tiles<scalar_t>(x_unit, out);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> angular_distance_bwd_cpu(const at::Tensor& grad,
                                                            const at::Tensor& x,
                                                            const std::optional<at::Tensor>& y,
                                                            bool clamp_grad_at_bounds,
                                                            const c10::List<bool>& output_mask) {
  const auto [want_x, want_y] = angular_distance_check_backward(kBwd, grad, x, y, output_mask);
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_y = at::empty({0}, y.has_value() ? y->options() : x.options());
  if (!want_x && !want_y) {
    return {grad_x, grad_y};
  }
  const UnitRows x_rows = unit_rows(x);
  const std::optional<UnitRows> y_rows =
      y.has_value() ? std::optional<UnitRows>(unit_rows(*y)) : std::nullopt;
  const at::Tensor grad_rows = grad.stride(1) == 1 ? grad : grad.contiguous();
  at::Tensor x_grad_unit;
  at::Tensor y_grad_unit;
  AMC_DISPATCH_FLOATING(x.scalar_type(), kBwd, [&] {
    if (y_rows.has_value()) {
      std::tie(x_grad_unit, y_grad_unit) = angular_backward_tiles<scalar_t>(
          grad_rows, x_rows.unit, y_rows->unit, clamp_grad_at_bounds, want_x, want_y);
    } else {
      x_grad_unit = self_backward_tiles<scalar_t>(grad_rows, x_rows.unit, clamp_grad_at_bounds);
    }
  });
  if (want_x) {
    grad_x = unit_rows_backward(x_rows, x_grad_unit, x.scalar_type(), clamp_grad_at_bounds);
  }
  if (want_y) {
    grad_y = unit_rows_backward(*y_rows, y_grad_unit, x.scalar_type(), clamp_grad_at_bounds);
  }
  return {grad_x, grad_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("angular_distance_fwd", &angular_distance_fwd_cpu);
  m.impl("angular_distance_bwd", &angular_distance_bwd_cpu);
}

}  // namespace amc_kernels::cpu
