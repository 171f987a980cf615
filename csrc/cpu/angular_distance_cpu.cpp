// angular_distance_fwd and angular_distance_bwd on CPU (DESIGN §2.1).
// Formula: θ_ij = arccos(clamp(⟨x̂_i, ŷ_j⟩, −1 + δ, 1 − δ)), x̂ = x / max(‖x‖, 1e-12), δ = 1e-7;
//   y = None means y = x. Backward: G = grad ⊙ dθ/dc (zero outside the clamp; at its bounds as
//   the running torch's clamp, see clamped_arccos_grad), dx̂ = G ŷ, dŷ = Gᵀ x̂, then the backward
//   of the normalisation.
// Forward mapping: the unit rows are computed once (O((N + M)·D)); at::parallel_for over
//   kRowTile × kColTile tiles of θ: one BLAS GEMM writes the tile's cosines into the output
//   (into a per-thread fp32 tile for fp16/bf16 outputs), then the vectorised clamped arccos runs
//   over the tile while it is in cache.
// Backward mapping: at::parallel_for over chunks of row tiles, one chunk per thread. A chunk
//   recomputes the cosine tiles of its rows (θ is not inverted: the clamp mask needs c itself),
//   turns each into G in place, adds G ŷ_J to its own rows of dx̂ and Gᵀ x̂_I to a private dŷ;
//   the private dŷ are summed at the end (O(threads·M·D)). With y = None, dx̂ gets both terms and
//   grad_y is empty.
// Accumulation: fp32 (fp64 for fp64 inputs); θ and the gradients are cast to x's dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "amc_kernels/checks.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "angular_common.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kFwd = "angular_distance_fwd";
constexpr const char* kBwd = "angular_distance_bwd";
constexpr int64_t kRowTile = 128;
constexpr int64_t kColTile = 512;

void check_inputs(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& y) {
  AMC_CHECK_DIM(x, 2, op, "x");
  AMC_CHECK_FLOATING(x, op, "x");
  if (y.has_value()) {
    AMC_CHECK_DIM(*y, 2, op, "y");
    AMC_CHECK(y->scalar_type() == x.scalar_type(), op, "y must have x's dtype ",
              x.scalar_type(), ", got ", y->scalar_type());
    AMC_CHECK(y->size(1) == x.size(1), op, "y must have x's feature size ", x.size(1), ", got ",
              y->size(1));
  }
}

template <typename scalar_t, typename acc_t>
void cast_row(const acc_t* values, scalar_t* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<scalar_t>(values[j]);
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

// θ = out, tile by tile. fp32/fp64 outputs take the GEMM directly; fp16/bf16 go through `scratch`.
template <typename scalar_t>
void angular_forward_tiles(const at::Tensor& x_unit, const at::Tensor& y_unit, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<scalar_t, acc_t>;
  const int64_t rows = x_unit.size(0);
  const int64_t cols = y_unit.size(0);
  const int64_t col_tiles = tile_count(cols, kColTile);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, tile_count(rows, kRowTile) * col_tiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scratch;
    if constexpr (!in_place) {
      scratch = at::empty({kRowTile, kColTile}, x_unit.options());
    }
    for (int64_t task = begin; task < end; ++task) {
      const Span r = tile_span(task / col_tiles, rows, kRowTile);
      const Span c = tile_span(task % col_tiles, cols, kColTile);
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
    }
  });
}

// dx̂ (zero-initialised, [N, D]) and dŷ ([M, D], returned) for the upstream gradient `grad`,
// whose rows are contiguous.
template <typename scalar_t>
at::Tensor angular_backward_tiles(const at::Tensor& grad, const at::Tensor& x_unit,
                                  const at::Tensor& y_unit, bool clamp_grad_at_bounds,
                                  at::Tensor& x_grad_unit) {
  const int64_t rows = x_unit.size(0);
  const int64_t cols = y_unit.size(0);
  const int64_t row_tiles = tile_count(rows, kRowTile);
  const int64_t col_tiles = tile_count(cols, kColTile);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), row_tiles));
  at::Tensor y_grad_parts = at::zeros({chunks, cols, y_unit.size(1)}, y_unit.options());
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int64_t grad_stride = grad.stride(0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scratch = at::empty({kRowTile, kColTile}, x_unit.options());
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      at::Tensor y_grad_part = y_grad_parts[chunk];
      for (int64_t ti = chunk * row_tiles / chunks; ti < (chunk + 1) * row_tiles / chunks; ++ti) {
        const Span r = tile_span(ti, rows, kRowTile);
        at::Tensor x_grad_rows = x_grad_unit.narrow(0, r.begin, r.size);
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
          x_grad_rows.addmm_(g, y_unit.narrow(0, c.begin, c.size));
          y_grad_part.narrow(0, c.begin, c.size).addmm_(g.t(), x_unit.narrow(0, r.begin, r.size));
        }
      }
    }
  });
  return y_grad_parts.sum(0);
}

at::Tensor angular_distance_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y) {
  check_inputs(kFwd, x, y);
  const at::Tensor x_unit = unit_rows(x).unit;
  const at::Tensor y_unit = y.has_value() ? unit_rows(*y).unit : x_unit;
  at::Tensor out = at::empty({x.size(0), y_unit.size(0)}, x.options());
  AMC_DISPATCH_FLOATING(x.scalar_type(), kFwd,
                        [&] { angular_forward_tiles<scalar_t>(x_unit, y_unit, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> angular_distance_bwd_cpu(const at::Tensor& grad,
                                                            const at::Tensor& x,
                                                            const std::optional<at::Tensor>& y,
                                                            bool clamp_grad_at_bounds) {
  check_inputs(kBwd, x, y);
  const UnitRows x_rows = unit_rows(x);
  const std::optional<UnitRows> y_rows =
      y.has_value() ? std::optional<UnitRows>(unit_rows(*y)) : std::nullopt;
  const at::Tensor& y_unit = y_rows.has_value() ? y_rows->unit : x_rows.unit;
  AMC_CHECK_DIM(grad, 2, kBwd, "grad");
  AMC_CHECK(grad.size(0) == x.size(0) && grad.size(1) == y_unit.size(0), kBwd,
            "grad must have shape [", x.size(0), ", ", y_unit.size(0), "], got ", grad.sizes());
  AMC_CHECK(grad.scalar_type() == x.scalar_type(), kBwd, "grad must have x's dtype ",
            x.scalar_type(), ", got ", grad.scalar_type());
  const at::Tensor grad_rows = grad.stride(1) == 1 ? grad : grad.contiguous();
  at::Tensor x_grad_unit = at::zeros_like(x_rows.unit);
  at::Tensor y_grad_unit;
  AMC_DISPATCH_FLOATING(x.scalar_type(), kBwd, [&] {
    y_grad_unit = angular_backward_tiles<scalar_t>(grad_rows, x_rows.unit, y_unit,
                                                   clamp_grad_at_bounds, x_grad_unit);
  });
  if (!y_rows.has_value()) {
    x_grad_unit.add_(y_grad_unit);
    return {unit_rows_backward(x_rows, x_grad_unit, x.scalar_type(), clamp_grad_at_bounds),
            at::empty({0}, x.options())};
  }
  return {unit_rows_backward(x_rows, x_grad_unit, x.scalar_type(), clamp_grad_at_bounds),
          unit_rows_backward(*y_rows, y_grad_unit, x.scalar_type(), clamp_grad_at_bounds)};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("angular_distance_fwd", &angular_distance_fwd_cpu);
  m.impl("angular_distance_bwd", &angular_distance_bwd_cpu);
}

}  // namespace amc_kernels::cpu
