// angular_distance_fwd and angular_distance_bwd on CUDA (docs/design.md#21-angular_distance).
// Formula: θ_ij = arccos(clamp(⟨x̂_i, ŷ_j⟩, −1 + δ, 1 − δ)), x̂ = x / max(‖x‖, ε) (ε = norm_eps,
//   δ of cosine_bound, math.h); y = None means y = x. Backward: G = grad ⊙ dθ/dc (the running
//   torch's clamp convention at the bounds), dx̂ = G ŷ, dŷ = Gᵀ x̂ (y = None: dx̂ = (G + Gᵀ) x̂),
//   then the backward of the normalisation; a gradient output_mask leaves out is not computed.
// Mapping: the operand rows once (tiles.cuh, prepare_rows). Forward: one block of 256 threads per
//   64 × 64 tile of θ, cosines from the similarity tile (tensor cores for fp16/bf16); y = None:
//   one block per tile pair I ≤ J, writing θ_IJ and its transpose θ_JI (bit-symmetric output,
//   half the GEMM work). Backward: grad sweeps (tiles.cuh) with x's rows as owners (and a second
//   one with y's rows as owners for dŷ): each block recomputes its cosine tiles, turns them into
//   G (grad[b][a] staged through shared memory for the transposed reads) and accumulates G·op_J;
//   no atomics, so the result is deterministic.
// Accumulation: fp32 (fp64 for fp64 inputs); θ and the gradients are cast to x's dtype.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_angular_distance.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "tiles.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kFwd = "angular_distance_fwd";
constexpr const char* kBwd = "angular_distance_bwd";

// The operand rows of a [rows, D] matrix (normalised).
template <typename scalar_t>
OperandRows operand_of(const at::Tensor& m, cudaStream_t stream) {
  OperandRows rows = empty_operand_rows(m.size(0), m.size(1), m);
  prepare_rows<scalar_t>(m.unsqueeze(1), 0, /*normalize=*/true, rows, stream);
  return rows;
}

// (I, J) with I ≤ J of the p-th tile pair, enumerated J-major: p = J(J + 1)/2 + I.
__device__ void pair_of(int64_t p, int64_t& i, int64_t& j) {
  j = static_cast<int64_t>((std::sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) / 2.0);
  while (j * (j + 1) / 2 > p) {
    --j;
  }
  while ((j + 1) * (j + 2) / 2 <= p) {
    ++j;
  }
  i = p - j * (j + 1) / 2;
}

// θ tiles into out [n, m]. symmetric: x = y, the grid over tile pairs; else the grid is
// (column tile, row tile).
template <typename Tile, typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    angular_forward_kernel(const typename Tile::op_t* x, const typename Tile::acc_t* fx,
                           int64_t n, const typename Tile::op_t* y,
                           const typename Tile::acc_t* fy, int64_t m, int64_t dim,
                           bool symmetric, scalar_t* out) {
  using acc_t = typename Tile::acc_t;
  unsigned char* smem = dynamic_smem();
  acc_t* c = reinterpret_cast<acc_t*>(smem + align_up(Tile::kStageBytes));
  int64_t ti;
  int64_t tj;
  if (symmetric) {
    pair_of(blockIdx.x, ti, tj);
  } else {
    ti = blockIdx.y;
    tj = blockIdx.x;
  }
  const TileCoords t{ti * kTile, tj * kTile, n, m};
  Tile::compute(x, t.a0, n, y, t.b0, m, dim, smem, c);
  __syncthreads();
  scale_tile(c, Tile::kLdc, fx, fy, t);
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
    const int i = e / kTile;
    const int j = e % kTile;
    const acc_t theta = clamped_arccos(c[i * Tile::kLdc + j]);
    c[i * Tile::kLdc + j] = theta;
    if (t.a0 + i < n && t.b0 + j < m) {
      out[(t.a0 + i) * m + t.b0 + j] = static_cast<scalar_t>(theta);
    }
  }
  if (!symmetric || ti == tj) {
    return;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
    const int j = e / kTile;
    const int i = e % kTile;
    if (t.a0 + i < n && t.b0 + j < m) {
      out[(t.b0 + j) * m + t.a0 + i] = static_cast<scalar_t>(c[i * Tile::kLdc + j]);
    }
  }
}

template <typename scalar_t>
void angular_forward(const OperandRows& x, const OperandRows* y, bool allow_tf32, at::Tensor& out,
                     cudaStream_t stream) {
  using op_t = operand_t<scalar_t>;
  const OperandRows& cols = y != nullptr ? *y : x;
  const int64_t n = x.op.size(0);
  const int64_t m = cols.op.size(0);
  const int64_t dim = x.op.size(1);
  const bool symmetric = y == nullptr;
  const int64_t row_tiles = tiles_of(n);
  const int64_t col_tiles = tiles_of(m);
  AMC_CHECK(symmetric || row_tiles <= 65535, kFwd, "x must have at most ", 65535 * kTile,
            " rows, got ", n);
  const dim3 grid = symmetric ? dim3(static_cast<unsigned>(row_tiles * (row_tiles + 1) / 2))
                              : dim3(static_cast<unsigned>(col_tiles),
                                     static_cast<unsigned>(row_tiles));
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    using acc_t = typename Tile::acc_t;
    const size_t bytes = align_up(Tile::kStageBytes) + sizeof(acc_t) * kTile * Tile::kLdc;
    const auto kernel = angular_forward_kernel<Tile, scalar_t>;
    allow_dynamic_smem(kernel, bytes);
    kernel<<<grid, kTileThreads, bytes, stream>>>(
        device_ptr<op_t>(x.op), x.factor.const_data_ptr<acc_t>(), n, device_ptr<op_t>(cols.op),
        cols.factor.const_data_ptr<acc_t>(), m, dim, symmetric, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The weights of a grad sweep: G_ab = g·dθ/dc(c) with g = grad[a][b] (owners x), grad[b][a]
// (owners y), or grad[a][b] + grad[b][a] (y = None). grad[b][a] of a tile is staged in shared
// memory (extra[j·(kTile + 1) + i]) so that its global reads stay coalesced.
template <typename scalar_t, typename acc_t>
struct AngularGradEpilogue {
  static constexpr size_t kExtraBytes = sizeof(acc_t) * kTile * (kTile + 1);
  const scalar_t* grad;
  int64_t grad_stride;
  bool direct;      // grad[a][b] enters
  bool transposed;  // grad[b][a] enters
  bool grad_at_bounds;

  __device__ int64_t column_end(int64_t /*a0*/, int64_t b_rows) const { return b_rows; }

  __device__ void stage(const TileCoords& t, void* extra) const {
    if (!transposed) {
      return;
    }
    acc_t* mirrored = static_cast<acc_t*>(extra);
    for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
      const int j = e / kTile;
      const int i = e % kTile;
      const bool inside = t.b0 + j < t.b_end && t.a0 + i < t.a_end;
      mirrored[j * (kTile + 1) + i] =
          inside ? static_cast<acc_t>(grad[(t.b0 + j) * grad_stride + t.a0 + i]) : acc_t(0);
    }
  }

  __device__ acc_t weight(const TileCoords& t, int i, int j, acc_t cosine,
                          const void* extra) const {
    acc_t g = 0;
    if (direct) {
      g += static_cast<acc_t>(grad[(t.a0 + i) * grad_stride + t.b0 + j]);
    }
    if (transposed) {
      g += static_cast<const acc_t*>(extra)[j * (kTile + 1) + i];
    }
    return g * clamped_arccos_grad(cosine, grad_at_bounds);
  }
};

// dL/d(owner rows) of x (or y), written into out in the input dtype.
template <typename scalar_t>
void angular_backward(const at::Tensor& grad, const OperandRows& owners,
                      const OperandRows& others, bool owners_are_x, bool symmetric,
                      bool clamp_grad_at_bounds, bool allow_tf32, at::Tensor& out,
                      cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int64_t rows = owners.op.size(0);
  const int64_t dim = owners.op.size(1);
  const int splits = grad_splits<acc_t>(rows, dim, others.op.size(0));
  at::Tensor partial = at::empty({splits, rows, dim}, owners.factor.options());
  const AngularGradEpilogue<scalar_t, acc_t> epi{grad.const_data_ptr<scalar_t>(), grad.stride(0),
                                                 owners_are_x, symmetric || !owners_are_x,
                                                 clamp_grad_at_bounds};
  with_tile<scalar_t>(allow_tf32, [&](auto tile) {
    using Tile = decltype(tile);
    const Sweep<typename Tile::op_t, acc_t> sweep{
        device_ptr<op_t>(owners.op), owners.factor.const_data_ptr<acc_t>(), 0, rows,
        device_ptr<op_t>(others.op), others.factor.const_data_ptr<acc_t>(), others.op.size(0),
        dim};
    launch_grad_sweep<Tile>(sweep, epi, splits, partial.mutable_data_ptr<acc_t>(), stream);
  });
  unit_rows_backward<scalar_t>(partial, splits, 0, owners, 0, rows, /*normalize=*/true,
                               clamp_grad_at_bounds, rows, 1, out, stream);
}

at::Tensor angular_distance_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& y) {
  angular_distance_check_inputs(kFwd, x, y, /*same_device=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t cols = y.has_value() ? y->size(0) : x.size(0);
  at::Tensor out = at::empty({x.size(0), cols}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  AMC_DISPATCH_FLOATING(x.scalar_type(), kFwd, [&] {
    const OperandRows x_rows = operand_of<scalar_t>(x, stream);
    if (y.has_value()) {
      const OperandRows y_rows = operand_of<scalar_t>(*y, stream);
      angular_forward<scalar_t>(x_rows, &y_rows, allow_tf32, out, stream);
    } else {
      angular_forward<scalar_t>(x_rows, nullptr, allow_tf32, out, stream);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> angular_distance_bwd_cuda(const at::Tensor& grad,
                                                             const at::Tensor& x,
                                                             const std::optional<at::Tensor>& y,
                                                             bool clamp_grad_at_bounds,
                                                             const c10::List<bool>& output_mask) {
  // Plain bools: the dispatch lambda captures them (no structured bindings in C++17 lambdas).
  const std::array<bool, 2> mask =
      angular_distance_check_backward(kBwd, grad, x, y, output_mask, /*same_device=*/true);
  const bool want_x = mask[0];
  const bool want_y = mask[1];
  const int64_t cols = y.has_value() ? y->size(0) : x.size(0);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = want_x ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_y = want_y ? at::empty(y->sizes(), y->options())
                             : at::empty({0}, y.has_value() ? y->options() : x.options());
  if (!want_x && !want_y) {
    return {grad_x, grad_y};
  }
  if (x.numel() == 0 || cols == 0 || x.size(1) == 0) {  // no θ depends on any entry
    grad_x.zero_();
    grad_y.zero_();
    return {grad_x, grad_y};
  }
  const at::Tensor grad_rows = grad.stride(1) == 1 ? grad : grad.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool allow_tf32 = at::globalContext().allowTF32CuBLAS();
  AMC_DISPATCH_FLOATING(x.scalar_type(), kBwd, [&] {
    const OperandRows x_rows = operand_of<scalar_t>(x, stream);
    if (!y.has_value()) {
      angular_backward<scalar_t>(grad_rows, x_rows, x_rows, true, true, clamp_grad_at_bounds,
                                 allow_tf32, grad_x, stream);
      return;
    }
    const OperandRows y_rows = operand_of<scalar_t>(*y, stream);
    if (want_x) {
      angular_backward<scalar_t>(grad_rows, x_rows, y_rows, true, false, clamp_grad_at_bounds,
                                 allow_tf32, grad_x, stream);
    }
    if (want_y) {
      angular_backward<scalar_t>(grad_rows, y_rows, x_rows, false, false, clamp_grad_at_bounds,
                                 allow_tf32, grad_y, stream);
    }
  });
  return {grad_x, grad_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("angular_distance_fwd", &angular_distance_fwd_cuda);
  m.impl("angular_distance_bwd", &angular_distance_bwd_cuda);
}

}  // namespace amc_kernels::cuda
