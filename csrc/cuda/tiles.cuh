// Shared device code of the similarity-tile kernels (angular_distance, amc_loss, supcon_loss).
// Operand rows: prepare_rows_kernel turns the input rows into the GEMM operand [rows, D] plus a
//   per-row factor f and the norms, so that every cosine (or logit numerator) is s_ij·f_i·f_j with
//   s_ij = ⟨op_i, op_j⟩. fp32/fp64: op = x̂ = x / max(‖x‖, ε) (as the CPU's unit_rows), f = 1.
//   fp16/bf16: op = x itself (exact tensor-core input; fp32 products of 16-bit values are exact),
//   f = 1 / max(‖x‖, ε): the cosine keeps fp32 accuracy instead of that of 16-bit unit rows.
// Similarity tile: S = A_I·B_Jᵀ for 64 × 64 rows, K = D in chunks staged through shared memory,
//   into a shared acc_t tile. WmmaTile: fp16/bf16 m16n16k16 tensor cores, fp32 accumulation;
//   Tf32Tile: fp32 through TF32 m16n16k8 (only when torch allows TF32 for cuBLAS); FmaTile: fp32
//   or fp64 FMA, 4 × 4 outputs per thread. 256 threads (8 warps) per block in every tile.
// Sweeps (row owners: deterministic without atomics): a block owns 64 rows of A and walks a fixed
//   run of the column tiles of B. The column tiles are cut into `splits` runs (grid z) so that
//   small problems still fill the GPU; every (split, row) writes its own partial, and a second
//   pass reduces the splits in order. Memory: splits·rows values (stats) or splits·rows·D (grads),
//   with splits·owner tiles ≈ kTargetBlocks: O(N) and O(N·D).
//   stats_sweep_kernel: S tile → scaled by f_i·f_j → Epilogue::consume (per-row statistics).
//   grad_sweep_kernel: S tile → W_ij = Epilogue::weight(i, j, s·f_i·f_j)·f_j in place, then the
//   partial dÂ_I += W·op_J over a chunk of kChunk feature columns (grid y), in FMA (acc_t).
// unit_rows_backward_kernel: sums the splits and applies the backward of the normalisation.
// Accumulation: fp32 (fp64 for fp64 inputs).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "amc_kernels/checks.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"
#include "common.cuh"

namespace amc_kernels::cuda {

constexpr int kTile = 64;          // rows and columns of a similarity tile
constexpr int kTileThreads = 256;  // threads of every tile kernel
constexpr int kWarpsPerBlock = kTileThreads / kWarpSize;
constexpr int64_t kTargetBlocks = 512;  // blocks a sweep aims for, through its splits
constexpr int kRowsPerWarp = kTile / kWarpsPerBlock;

// ---- element types ----------------------------------------------------------------------

template <typename scalar_t>
constexpr bool is_16bit = std::is_same_v<scalar_t, c10::Half> ||
                          std::is_same_v<scalar_t, c10::BFloat16>;

// Storage of the operand rows: the input dtype for fp16/bf16, acc_t otherwise.
template <typename scalar_t>
using operand_t = std::conditional_t<is_16bit<scalar_t>, scalar_t, acc_type<scalar_t>>;

// The CUDA type of a storage type: __half and __nv_bfloat16 for c10's.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DeviceType<T>::type* device_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename DeviceType<T>::type*>(t.const_data_ptr<T>());
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T zero_value() {
  return T(0);
}
template <>
__device__ __forceinline__ __half zero_value<__half>() {
  return __ushort_as_half(0);
}
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() {
  return __ushort_as_bfloat16(0);
}

__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}

constexpr size_t align_up(size_t bytes) { return (bytes + 127) / 128 * 128; }

// ---- similarity tiles ---------------------------------------------------------------------

// Rows [row0, row0 + 64) × columns [k0, k0 + kK) of a [rows, dim] row-major matrix into dst
// (row stride kLd), zero outside the matrix.
template <int kK, int kLd, typename T>
__device__ __forceinline__ void stage_block(const T* __restrict__ src, int64_t row0, int64_t rows,
                                            int64_t dim, int64_t k0, T* dst) {
  for (int e = threadIdx.x; e < kTile * kK; e += kTileThreads) {
    const int r = e / kK;
    const int k = e % kK;
    const int64_t row = row0 + r;
    const int64_t col = k0 + k;
    dst[r * kLd + k] = row < rows && col < dim ? src[row * dim + col] : zero_value<T>();
  }
}

// Every tile: compute(a, a0, a_rows, b, b0, b_rows, dim, stage, c) writes
// c[i·kLdc + j] = Σ_k a[a0 + i][k]·b[b0 + j][k] (rows past a_rows / b_rows read as zero), using
// kStageBytes of shared staging; it ends with a __syncthreads after its last use of the staging.

template <typename acc_type_>
struct FmaTile {
  using acc_t = acc_type_;
  using op_t = acc_type_;
  static constexpr int kK = sizeof(acc_t) == 8 ? 16 : 32;
  static constexpr int kLd = kK + 1;
  static constexpr int kLdc = kTile + 1;
  static constexpr size_t kStageBytes = 2 * kTile * kLd * sizeof(op_t);

  __device__ static void compute(const op_t* a, int64_t a0, int64_t a_rows, const op_t* b,
                                 int64_t b0, int64_t b_rows, int64_t dim, void* stage,
                                 acc_t* c) {
    op_t* sa = static_cast<op_t*>(stage);
    op_t* sb = sa + kTile * kLd;
    const int tx = threadIdx.x % 16;
    const int ty = threadIdx.x / 16;
    acc_t acc[4][4] = {};
    for (int64_t k0 = 0; k0 < dim; k0 += kK) {
      stage_block<kK, kLd>(a, a0, a_rows, dim, k0, sa);
      stage_block<kK, kLd>(b, b0, b_rows, dim, k0, sb);
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kK; ++k) {
        acc_t av[4];
        acc_t bv[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          av[t] = sa[(ty + 16 * t) * kLd + k];
          bv[t] = sb[(tx + 16 * t) * kLd + k];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            acc[i][j] = fma_rn(av[i], bv[j], acc[i][j]);  // bit-symmetric in (a, b)
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        c[(ty + 16 * i) * kLdc + tx + 16 * j] = acc[i][j];
      }
    }
  }
};

// Warp w computes the 16 × 32 block of fragment row w / 2, fragment columns 2·(w % 2) + {0, 1}.
// frag_t: the element type of the fragments (op_t, or precision::tf32), kStep its k.
template <typename op_type_, typename frag_t, int kStep>
struct WmmaTileBase {
  using acc_t = float;
  using op_t = op_type_;
  static constexpr int kK = 32;
  static constexpr int kLd = kK + (sizeof(op_t) == 2 ? 8 : 4);  // 32-byte aligned fragment rows
  static constexpr int kLdc = kTile + 4;
  static constexpr size_t kStageBytes = 2 * kTile * kLd * sizeof(op_t);

  __device__ static void compute(const op_t* a, int64_t a0, int64_t a_rows, const op_t* b,
                                 int64_t b0, int64_t b_rows, int64_t dim, void* stage,
                                 acc_t* c) {
    using namespace nvcuda;
    op_t* sa = static_cast<op_t*>(stage);
    op_t* sb = sa + kTile * kLd;
    const int warp = threadIdx.x / kWarpSize;
    const int frag_row = warp / 2;
    const int frag_col = (warp % 2) * 2;
    wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    for (int64_t k0 = 0; k0 < dim; k0 += kK) {
      stage_block<kK, kLd>(a, a0, a_rows, dim, k0, sa);
      stage_block<kK, kLd>(b, b0, b_rows, dim, k0, sb);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kK; kk += kStep) {
        wmma::fragment<wmma::matrix_a, 16, 16, kStep, frag_t, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, sa + frag_row * 16 * kLd + kk, kLd);
        round_fragment(fa);
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          // B_Jᵀ as a column-major K × 64 matrix: element (k, n) at sb[n·kLd + k].
          wmma::fragment<wmma::matrix_b, 16, 16, kStep, frag_t, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, sb + (frag_col + t) * 16 * kLd + kk, kLd);
          round_fragment(fb);
          wmma::mma_sync(acc[t], fa, fb, acc[t]);
        }
      }
      __syncthreads();
    }
    for (int t = 0; t < 2; ++t) {
      wmma::store_matrix_sync(c + frag_row * 16 * kLdc + (frag_col + t) * 16, acc[t], kLdc,
                              wmma::mem_row_major);
    }
  }

  // fp32 → TF32 rounding of a loaded tf32 fragment; nothing for 16-bit fragments.
  template <typename Fragment>
  __device__ static void round_fragment(Fragment& f) {
    if constexpr (std::is_same_v<frag_t, nvcuda::wmma::precision::tf32>) {
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) {
        f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
      }
    }
  }
};

template <typename op_t>
using WmmaTile = WmmaTileBase<op_t, op_t, 16>;
using Tf32Tile = WmmaTileBase<float, nvcuda::wmma::precision::tf32, 8>;

// Calls f(Tile{}) with the tile of scalar_t: tensor cores for fp16/bf16, TF32 for fp32 when
// torch.backends.cuda.matmul.allow_tf32 is set, FMA otherwise.
template <typename scalar_t, typename F>
void with_tile(bool allow_tf32, const F& f) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    f(WmmaTile<__half>{});
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    f(WmmaTile<__nv_bfloat16>{});
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (allow_tf32) {
      f(Tf32Tile{});
    } else {
      f(FmaTile<float>{});
    }
  } else {
    f(FmaTile<double>{});
  }
}

// ---- operand rows -------------------------------------------------------------------------

// Row r of a [samples, views, D] source (any strides) is sample r % samples, view r / samples:
// the view-major stacking of supcon; views = 1 for a plain [rows, D] matrix.
template <typename scalar_t>
struct RowSource {
  const scalar_t* data;
  int64_t samples;
  int64_t views;
  int64_t sample_stride;
  int64_t view_stride;
  int64_t col_stride;

  __device__ const scalar_t* row(int64_t r) const {
    return data + (r % samples) * sample_stride + (r / samples) * view_stride;
  }
};

// One warp per row: norm[r] = ‖x_r‖, and op, factor as described at the top of this file.
template <typename scalar_t, typename op_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    prepare_rows_kernel(RowSource<scalar_t> src, int64_t dim, bool normalize, op_t* op,
                        acc_t* factor, acc_t* norm) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (r >= src.samples * src.views) {
    return;
  }
  const scalar_t* x = src.row(r);
  acc_t squares = 0;
  for (int64_t k = lane; k < dim; k += kWarpSize) {
    const acc_t v = static_cast<acc_t>(x[k * src.col_stride]);
    squares += v * v;
  }
  const acc_t length = std::sqrt(warp_reduce_sum(squares));
  const acc_t denom = std::max(length, norm_eps<acc_t>());
  constexpr bool kRaw = !std::is_same_v<op_t, acc_t>;
  for (int64_t k = lane; k < dim; k += kWarpSize) {
    const scalar_t v = x[k * src.col_stride];
    if constexpr (kRaw) {
      op[r * dim + k] = v;
    } else {
      op[r * dim + k] = normalize ? static_cast<acc_t>(v) / denom : static_cast<acc_t>(v);
    }
  }
  if (lane == 0) {
    factor[r] = kRaw && normalize ? acc_t(1) / denom : acc_t(1);
    norm[r] = length;
  }
}

// The operand of a set of rows: op [rows, D] (operand_t), factor [rows], norm [rows] (acc_t).
struct OperandRows {
  at::Tensor op;
  at::Tensor factor;
  at::Tensor norm;
};

inline OperandRows empty_operand_rows(int64_t rows, int64_t dim, const at::Tensor& like) {
  const auto acc = accumulation_dtype(like);
  const bool raw = like.scalar_type() == at::kHalf || like.scalar_type() == at::kBFloat16;
  return {at::empty({rows, dim}, like.options().dtype(raw ? like.scalar_type() : acc)),
          at::empty({rows}, like.options().dtype(acc)),
          at::empty({rows}, like.options().dtype(acc))};
}

// Writes rows [first, first + samples·views) of `rows` from src [samples, views, D].
template <typename scalar_t>
void prepare_rows(const at::Tensor& src, int64_t first, bool normalize, OperandRows& rows,
                  cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int64_t count = src.size(0) * src.size(1);
  if (count == 0) {
    return;
  }
  const int64_t dim = src.size(2);
  const RowSource<scalar_t> source{src.const_data_ptr<scalar_t>(), src.size(0), src.size(1),
                                   src.stride(0), src.stride(1), src.stride(2)};
  const int64_t blocks = (count + kWarpsPerBlock - 1) / kWarpsPerBlock;
  prepare_rows_kernel<scalar_t, op_t, acc_t><<<blocks, kTileThreads, 0, stream>>>(
      source, dim, normalize, rows.op.mutable_data_ptr<op_t>() + first * dim,
      rows.factor.mutable_data_ptr<acc_t>() + first, rows.norm.mutable_data_ptr<acc_t>() + first);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- sweeps -------------------------------------------------------------------------------

// Owner rows [a_begin, a_end) of operand a against the column rows of operand b (b_rows of them;
// an epilogue may stop earlier per owner tile through column_end).
template <typename op_t, typename acc_t>
struct Sweep {
  const op_t* a;
  const acc_t* a_factor;
  int64_t a_begin;
  int64_t a_end;
  const op_t* b;
  const acc_t* b_factor;
  int64_t b_rows;
  int64_t dim;
};

// The tile a block works on: owner rows [a0, a0 + 64) ∩ [.., a_end), columns [b0, b0 + 64) ∩
// [.., b_end).
struct TileCoords {
  int64_t a0;
  int64_t b0;
  int64_t a_end;
  int64_t b_end;
};

__host__ __device__ inline int64_t tiles_of(int64_t rows) { return (rows + kTile - 1) / kTile; }

// Splits of the column tiles so that owner_blocks · splits ≈ kTargetBlocks; depends on the
// shapes only, so results are deterministic across devices too.
inline int sweep_splits(int64_t owner_blocks, int64_t column_tiles) {
  const int64_t want = (kTargetBlocks + owner_blocks - 1) / std::max<int64_t>(owner_blocks, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::max<int64_t>(column_tiles, 1)));
}

// c[i][j] ← c[i][j]·f_a·f_b for the valid entries of the tile.
template <typename acc_t>
__device__ __forceinline__ void scale_tile(acc_t* c, int ldc, const acc_t* fa, const acc_t* fb,
                                           const TileCoords& t) {
  for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
    const int i = e / kTile;
    const int j = e % kTile;
    if (t.a0 + i < t.a_end && t.b0 + j < t.b_end) {
      c[i * ldc + j] *= fa[t.a0 + i] * fb[t.b0 + j];
    }
  }
}

// The column tiles [begin, end) of split `split` out of `splits` over `tiles` tiles.
__device__ __forceinline__ void split_range(int64_t tiles, int split, int splits, int64_t& begin,
                                            int64_t& end) {
  begin = tiles * split / splits;
  end = tiles * (split + 1) / splits;
}

// Epilogue: kExtraBytes of shared scratch; column_end(a0, b_rows); start(extra);
// consume(coords, c, ldc, extra) on the scaled tile; finish(a0, a_end, split, extra).
template <typename Tile, typename Epilogue>
__global__ void __launch_bounds__(kTileThreads)
    stats_sweep_kernel(Sweep<typename Tile::op_t, typename Tile::acc_t> s, Epilogue epi) {
  using acc_t = typename Tile::acc_t;
  unsigned char* smem = dynamic_smem();
  void* stage = smem;
  acc_t* c = reinterpret_cast<acc_t*>(smem + align_up(Tile::kStageBytes));
  void* extra = smem + align_up(Tile::kStageBytes) + align_up(sizeof(acc_t) * kTile * Tile::kLdc);
  const int64_t a0 = s.a_begin + static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t b_end = epi.column_end(a0, s.b_rows);
  int64_t first;
  int64_t last;
  split_range(tiles_of(b_end), blockIdx.z, gridDim.z, first, last);
  epi.start(extra);
  for (int64_t tile = first; tile < last; ++tile) {
    const TileCoords t{a0, tile * kTile, s.a_end, b_end};
    Tile::compute(s.a, t.a0, t.a_end, s.b, t.b0, t.b_end, s.dim, stage, c);
    __syncthreads();
    scale_tile(c, Tile::kLdc, s.a_factor, s.b_factor, t);
    __syncthreads();
    epi.consume(t, c, Tile::kLdc, extra);
    __syncthreads();
  }
  epi.finish(a0, s.a_end, static_cast<int>(blockIdx.z), extra);
}

// Feature columns of a block of grad_sweep_kernel.
template <typename acc_t>
constexpr int grad_chunk() {
  return sizeof(acc_t) == 8 ? 64 : 128;
}

template <typename Tile>
constexpr size_t grad_stage_bytes() {
  using acc_t = typename Tile::acc_t;
  return std::max(Tile::kStageBytes, sizeof(acc_t) * kTile * grad_chunk<acc_t>());
}

// partial[split][a − a_begin][d] = Σ_{b in the split} W_ab·op_b[d] for d in the block's chunk,
// W_ab = weight(coords, i, j, s_ab·f_a·f_b, extra)·f_b. Epilogue: kExtraBytes, column_end,
// stage(coords, extra) (loads the shared scratch of a tile), weight.
template <typename Tile, typename Epilogue>
__global__ void __launch_bounds__(kTileThreads)
    grad_sweep_kernel(Sweep<typename Tile::op_t, typename Tile::acc_t> s, Epilogue epi,
                      typename Tile::acc_t* partial) {
  using acc_t = typename Tile::acc_t;
  using op_t = typename Tile::op_t;
  constexpr int kChunk = grad_chunk<acc_t>();
  constexpr int kCols = kChunk / 16;
  unsigned char* smem = dynamic_smem();
  void* stage = smem;  // the similarity tile's staging, then the op_J chunk
  acc_t* zq = reinterpret_cast<acc_t*>(smem);
  acc_t* c = reinterpret_cast<acc_t*>(smem + align_up(grad_stage_bytes<Tile>()));
  void* extra =
      smem + align_up(grad_stage_bytes<Tile>()) + align_up(sizeof(acc_t) * kTile * Tile::kLdc);
  const int64_t a0 = s.a_begin + static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t b_end = epi.column_end(a0, s.b_rows);
  int64_t first;
  int64_t last;
  split_range(tiles_of(b_end), blockIdx.z, gridDim.z, first, last);
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  acc_t acc[4][kCols] = {};
  for (int64_t tile = first; tile < last; ++tile) {
    const TileCoords t{a0, tile * kTile, s.a_end, b_end};
    epi.stage(t, extra);  // published by the first __syncthreads of compute
    Tile::compute(s.a, t.a0, t.a_end, s.b, t.b0, t.b_end, s.dim, stage, c);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kTileThreads) {
      const int i = e / kTile;
      const int j = e % kTile;
      const int64_t a = t.a0 + i;
      const int64_t b = t.b0 + j;
      acc_t w = 0;
      if (a < t.a_end && b < t.b_end) {
        const acc_t fb = s.b_factor[b];
        w = epi.weight(t, i, j, c[i * Tile::kLdc + j] * s.a_factor[a] * fb, extra) * fb;
      }
      c[i * Tile::kLdc + j] = w;
    }
    for (int e = threadIdx.x; e < kTile * kChunk; e += kTileThreads) {
      const int q = e / kChunk;
      const int d = e % kChunk;
      const int64_t b = t.b0 + q;
      zq[e] = b < t.b_end && d0 + d < s.dim ? static_cast<acc_t>(to_acc(s.b[b * s.dim + d0 + d]))
                                            : acc_t(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int q = 0; q < kTile; ++q) {
      acc_t wv[4];
      acc_t zv[kCols];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        wv[r] = c[(ty + 16 * r) * Tile::kLdc + q];
      }
#pragma unroll
      for (int d = 0; d < kCols; ++d) {
        zv[d] = zq[q * kChunk + tx + 16 * d];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int d = 0; d < kCols; ++d) {
          acc[r][d] = fma_rn(wv[r], zv[d], acc[r][d]);
        }
      }
    }
    __syncthreads();
  }
  const int64_t owned = s.a_end - s.a_begin;
  acc_t* out = partial + static_cast<int64_t>(blockIdx.z) * owned * s.dim;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t a = a0 + ty + 16 * r;
#pragma unroll
    for (int d = 0; d < kCols; ++d) {
      const int64_t col = d0 + tx + 16 * d;
      if (a < s.a_end && col < s.dim) {
        out[(a - s.a_begin) * s.dim + col] = acc[r][d];
      }
    }
  }
}

template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

template <typename Tile, typename Epilogue>
void launch_stats_sweep(const Sweep<typename Tile::op_t, typename Tile::acc_t>& s,
                        const Epilogue& epi, int splits, cudaStream_t stream) {
  using acc_t = typename Tile::acc_t;
  const int64_t owner_tiles = tiles_of(s.a_end - s.a_begin);
  if (owner_tiles == 0) {
    return;
  }
  const size_t bytes = align_up(Tile::kStageBytes) + align_up(sizeof(acc_t) * kTile * Tile::kLdc) +
                       Epilogue::kExtraBytes;
  const auto kernel = stats_sweep_kernel<Tile, Epilogue>;
  allow_dynamic_smem(kernel, bytes);
  kernel<<<dim3(static_cast<unsigned>(owner_tiles), 1, splits), kTileThreads, bytes, stream>>>(s,
                                                                                              epi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// partial: [splits, a_end − a_begin, D].
template <typename Tile, typename Epilogue>
void launch_grad_sweep(const Sweep<typename Tile::op_t, typename Tile::acc_t>& s,
                       const Epilogue& epi, int splits, typename Tile::acc_t* partial,
                       cudaStream_t stream) {
  using acc_t = typename Tile::acc_t;
  const int64_t owner_tiles = tiles_of(s.a_end - s.a_begin);
  const int64_t chunks = (s.dim + grad_chunk<acc_t>() - 1) / grad_chunk<acc_t>();
  if (owner_tiles == 0 || chunks == 0) {
    return;
  }
  const size_t bytes = align_up(grad_stage_bytes<Tile>()) +
                       align_up(sizeof(acc_t) * kTile * Tile::kLdc) + Epilogue::kExtraBytes;
  const auto kernel = grad_sweep_kernel<Tile, Epilogue>;
  allow_dynamic_smem(kernel, bytes);
  kernel<<<dim3(static_cast<unsigned>(owner_tiles), static_cast<unsigned>(chunks), splits),
           kTileThreads, bytes, stream>>>(s, epi, partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The splits of a grad sweep over owner_rows rows, D = dim, column_rows column rows.
template <typename acc_t>
int grad_splits(int64_t owner_rows, int64_t dim, int64_t column_rows) {
  const int64_t chunks =
      std::max<int64_t>(1, (dim + grad_chunk<acc_t>() - 1) / grad_chunk<acc_t>());
  return sweep_splits(tiles_of(owner_rows) * chunks, tiles_of(column_rows));
}

// ---- the backward of the normalisation ------------------------------------------------------

// One warp per row r of [0, rows): dẑ = Σ_s partial[s·split_stride + r·D + ·]; with normalize,
// ẑ = op_r·f_r and dx = (dẑ − ẑ⟨ẑ, dẑ⟩)/‖x‖ where ‖x‖ > ε (or = ε when grad_at_bounds), else
// dẑ/ε; without, dx = dẑ. Row r is written as sample r % samples, view r / samples of a
// contiguous [samples, views, D] output.
template <typename scalar_t, typename op_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    unit_rows_backward_kernel(const acc_t* partial, int splits, int64_t split_stride,
                              int64_t rows, int64_t dim, const op_t* op, const acc_t* factor,
                              const acc_t* norm, bool normalize, bool grad_at_bounds,
                              int64_t samples, int64_t views, scalar_t* out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (r >= rows) {
    return;
  }
  const auto unit_grad = [&](int64_t k) {
    acc_t total = 0;
    for (int s = 0; s < splits; ++s) {
      total += partial[s * split_stride + r * dim + k];
    }
    return total;
  };
  scalar_t* dx = out + ((r % samples) * views + r / samples) * dim;
  const acc_t eps = norm_eps<acc_t>();
  const acc_t length = norm[r];
  const bool radial_form = length > eps || (grad_at_bounds && length == eps);
  if (!normalize || !radial_form) {
    for (int64_t k = lane; k < dim; k += kWarpSize) {
      dx[k] = static_cast<scalar_t>(normalize ? unit_grad(k) / eps : unit_grad(k));
    }
    return;
  }
  const acc_t f = factor[r];
  acc_t radial = 0;
  for (int64_t k = lane; k < dim; k += kWarpSize) {
    radial += static_cast<acc_t>(to_acc(op[r * dim + k])) * f * unit_grad(k);
  }
  radial = warp_reduce_sum(radial);
  for (int64_t k = lane; k < dim; k += kWarpSize) {
    const acc_t u = static_cast<acc_t>(to_acc(op[r * dim + k])) * f;
    dx[k] = static_cast<scalar_t>((unit_grad(k) - u * radial) / length);
  }
}

// Rows [first, first + count) of `rows` (whose partial rows start at partial_row) into out.
template <typename scalar_t>
void unit_rows_backward(const at::Tensor& partial, int splits, int64_t partial_row,
                        const OperandRows& rows, int64_t first, int64_t count, bool normalize,
                        bool grad_at_bounds, int64_t samples, int64_t views, at::Tensor& out,
                        cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  using op_t = operand_t<scalar_t>;
  const int64_t dim = rows.op.size(1);
  if (count == 0 || dim == 0) {
    return;
  }
  const int64_t blocks = (count + kWarpsPerBlock - 1) / kWarpsPerBlock;
  unit_rows_backward_kernel<scalar_t, typename DeviceType<op_t>::type, acc_t>
      <<<blocks, kTileThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>() + partial_row * dim, splits, partial.size(1) * dim,
          count, dim, device_ptr<op_t>(rows.op) + first * dim,
          rows.factor.const_data_ptr<acc_t>() + first, rows.norm.const_data_ptr<acc_t>() + first,
          normalize, grad_at_bounds, samples, views, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- small reductions -----------------------------------------------------------------------

// out[0] = scale · Σ values, in one block of kTileThreads threads: a fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    scaled_sum_kernel(const acc_t* values, int64_t n, acc_t scale, acc_t* out) {
  acc_t total = 0;
  for (int64_t i = threadIdx.x; i < n; i += kTileThreads) {
    total += values[i];
  }
  total = block_reduce_sum(total);
  if (threadIdx.x == 0) {
    out[0] = total * scale;
  }
}

template <typename acc_t>
void scaled_sum(const at::Tensor& values, acc_t scale, at::Tensor& out, cudaStream_t stream) {
  scaled_sum_kernel<acc_t><<<1, kTileThreads, 0, stream>>>(
      values.const_data_ptr<acc_t>(), values.numel(), scale, out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace amc_kernels::cuda
