// CPU building blocks of the row kernels: the tile pairs of a symmetric matrix (see
// tile_utils_cpu.h for their schedules) and the row normalisation.
// Normalisation: x̂_i = x_i / max(‖x_i‖, ε), ε = norm_eps (math.h; F.normalize's). The norms
//   come from at::linalg_vector_norm, the call F.normalize makes, so the unit rows are
//   bit-identical to the reference's: the cosine of two duplicate rows then falls on the same
//   side of the arccos clamp.
//   Backward: for ‖x‖ > ε, dx = (dx̂ − x̂⟨x̂, dx̂⟩) / ‖x‖; for ‖x‖ < ε, x̂ = x / ε, dx = dx̂ / ε.
//   ‖x‖ = ε takes the first form where the running torch's clamp_min passes the gradient at its
//   bound (older versions), the second where it does not (newer ones, pytorch/pytorch#184574).
//   Mapping: at::parallel_for over rows. Accumulation: fp32 (fp64 for fp64 inputs).
#include "tile_utils_cpu.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mm.h>
#include <ATen/Parallel.h>

#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"

namespace amc_kernels::cpu {
namespace {

// Rows per at::parallel_for grain: about 16 K multiply-adds of work.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

}  // namespace

std::vector<TilePair> tile_pairs(int64_t tiles) {
  std::vector<TilePair> pairs;
  for (int64_t first = 0; first < tiles; ++first) {
    for (int64_t second = first; second < tiles; ++second) {
      pairs.push_back({first, second});
    }
  }
  return pairs;
}

int64_t pair_tile_rows(int64_t n) {
  const int64_t tasks = 2 * at::get_num_threads();
  const int64_t per_task = (n + tasks - 1) / tasks;
  return std::clamp<int64_t>((per_task + 15) / 16 * 16, 64, 256);
}

at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void cosine_tile(const at::Tensor& a_unit, Span rows, const at::Tensor& b_unit, Span cols,
                 at::Tensor& out) {
  at::mm_out(out, a_unit.narrow(0, rows.begin, rows.size),
             b_unit.narrow(0, cols.begin, cols.size).t());
}

UnitRows unit_rows(const at::Tensor& x) {
  const at::ScalarType acc_dtype = compute_dtype(x.scalar_type());
  at::Tensor norm = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/false, acc_dtype);
  at::Tensor unit = at::empty(x.sizes(), x.options().dtype(acc_dtype));
  const int64_t rows = x.size(0);
  const int64_t cols = x.size(1);
  AMC_DISPATCH_FLOATING(x.scalar_type(), "unit_rows", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const int64_t row_stride = x.stride(0);
    const int64_t col_stride = x.stride(1);
    const acc_t* norms = norm.const_data_ptr<acc_t>();
    acc_t* out = unit.mutable_data_ptr<acc_t>();
    const acc_t eps = norm_eps<acc_t>();
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t denom = std::max(norms[i], eps);
        for (int64_t k = 0; k < cols; ++k) {
          out[i * cols + k] = static_cast<acc_t>(in[i * row_stride + k * col_stride]) / denom;
        }
      }
    });
  });
  return {unit, norm};
}

at::Tensor unit_rows_backward(const UnitRows& rows, const at::Tensor& grad_unit,
                              at::ScalarType dtype, bool clamp_grad_at_bounds) {
  const int64_t n = rows.unit.size(0);
  const int64_t cols = rows.unit.size(1);
  at::Tensor grad = at::empty({n, cols}, rows.unit.options().dtype(dtype));
  AMC_DISPATCH_FLOATING(dtype, "unit_rows_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t* unit = rows.unit.const_data_ptr<acc_t>();
    const acc_t* norms = rows.norm.const_data_ptr<acc_t>();
    const acc_t* dunit = grad_unit.const_data_ptr<acc_t>();
    scalar_t* out = grad.mutable_data_ptr<scalar_t>();
    const acc_t eps = norm_eps<acc_t>();
    at::parallel_for(0, n, row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t* u = unit + i * cols;
        const acc_t* g = dunit + i * cols;
        scalar_t* dx = out + i * cols;
        if (norms[i] > eps || (clamp_grad_at_bounds && norms[i] == eps)) {
          acc_t radial = 0;
          for (int64_t k = 0; k < cols; ++k) {
            radial += u[k] * g[k];
          }
          for (int64_t k = 0; k < cols; ++k) {
            dx[k] = static_cast<scalar_t>((g[k] - u[k] * radial) / norms[i]);
          }
        } else {
          for (int64_t k = 0; k < cols; ++k) {
            dx[k] = static_cast<scalar_t>(g[k] / eps);
          }
        }
      }
    });
  });
  return grad;
}

}  // namespace amc_kernels::cpu
