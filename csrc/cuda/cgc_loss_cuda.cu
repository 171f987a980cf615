// cgc_loss_fwd and cgc_loss_bwd on CUDA: the CGC loss of docs/design.md#26-cgc_loss, exactly, on
// the native h×w maps, with the formulas of csrc/cpu/cgc_loss_cpu.cpp. No size×size map exists.
//
// Formula. R_h (size×h), R_w (size×w): the bilinear resizes to size (align_corners=False);
// r = Rᵀ1, K = RᵀR. Sample b's crop (i, j, ch, cw) and flip give A_b = Resize_{ch→size}·
// Select_{i..i+ch}·R_h and B_b = Flip·Resize_{cw→size}·Select_{j..j+cw}·R_w (rows from
// cropped_resize_taps, math.h). With ε = map_eps, X_b = A_b c_b B_bᵀ, Y_b = R_h c'_b R_wᵀ:
//   σ_b = r_hᵀ c_b r_w + ε, σ'_b = r_hᵀ c'_b r_w + ε, u_b = X_b/σ_b + εJ, v_b = Y_b/σ'_b + εJ;
//   ⟨X, X⟩ = ⟨c, (AᵀA) c (BᵀB)⟩, ⟨X, Y⟩ = ⟨c, (AᵀR_h) c' (R_wᵀB)⟩, ⟨Y_b, Y_j⟩ = ⟨c'_b, K_h c'_j K_w⟩,
//   ΣX = (Aᵀ1)ᵀ c (Bᵀ1), ΣY = r_hᵀ c' r_w, ⟨u, v⟩ = normalized_map_inner(…).
// logits_b = [cos(u_b, v_b), cos(v_b, v_j) for j ≠ b] / τ; loss = mean_b (lse_b − logits_b0).
// Backward: dL/du_b = α_b v_b + β_b u_b, dL/dv_b = α_b u_b + Σ_j Ω_bj v_j, pulled back through
// the affine maps (dL/dc = Aᵀ(dL/du)B/σ − ⟨dL/du, X⟩/σ²·r_h r_wᵀ, dL/dc' likewise with R_h,
// R_w, σ'). The upstream gradient is read on the device: no host synchronisation. τ is the
// float temperature or the 0-d temperature_tensor, read on the device; ∂L/∂τ = −(1/τ)·Σ_bj
// (∂L/∂logit_bj)·cos_bj: one partial per row (coefficients_kernel), then one ordered sum.
//
// Grid mapping: per-axis matrices (AᵀA, AᵀR, Aᵀ1, and K, r for the frame): one block per
// (sample, axis), one thread per entry, summing over the frame rows k whose taps touch both
// indices (tap_window), in k order; the h×w sandwiches L·c·R: two batched small matmuls, one
// thread per output entry; per-sample sums: one block per sample; the B×B Gram ⟨c'_b, Z_j⟩:
// one warp per entry; the softmax epilogue and the backward coefficients: one block per row b;
// Ω·Z and the pull-back: one thread per (sample, pixel). No atomics: every sum has a fixed order.
// Memory: O(B·h·w + B·(h² + w²) + B²). Accumulation: acc_type (fp32; fp64 for fp64 maps); the
// h×w maps are converted to it once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_cgc_loss.h"
#include "amc_kernels/math.h"
#include "maps.cuh"

namespace amc_kernels::cuda {
namespace {

constexpr const char* kFwd = "cgc_loss_fwd";
constexpr const char* kBwd = "cgc_loss_bwd";

// ---- per-axis interpolation matrices -------------------------------------------------------

// One axis of one sample: n source samples, the crop [start, start + len) of the size frame,
// mirrored for a flip. The frame itself is (0, size, unmirrored): A = R.
struct Axis {
  int64_t n;
  int64_t size;
  int64_t start;
  int64_t len;
  bool mirrored;

  // A[k, m]: the weights of row k's four taps that land on m, in tap order.
  template <typename acc_t>
  __device__ acc_t crop_weight(int64_t k, int64_t m) const {
    const CroppedTaps<acc_t> taps = cropped_resize_taps<acc_t>(k, start, len, mirrored, n, size);
    acc_t total = 0;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      total += taps.index[p] == m ? taps.weight[p] : acc_t(0);
    }
    return total;
  }

  // R[k, m].
  template <typename acc_t>
  __device__ acc_t frame_weight(int64_t k, int64_t m) const {
    return tap_weight(linear_tap<acc_t>(k, n, size), m);
  }

  // Rows k of A that can touch source m: frame positions reading m, through the crop's taps.
  __device__ Window crop_window(int64_t m) const {
    const Window frame = tap_window(m, n, size);
    const int64_t lo = std::max<int64_t>(frame.begin - start, 0);
    const int64_t hi = std::min<int64_t>(frame.end - 1 - start, len - 1);
    if (lo > hi) {
      return {0, 0};
    }
    const Window rows{tap_window(lo, len, size).begin, tap_window(hi, len, size).end};
    return mirrored ? Window{size - rows.end, size - rows.begin} : rows;
  }
};

__device__ __forceinline__ Window intersect(Window a, Window b) {
  return {std::max(a.begin, b.begin), std::min(a.end, b.end)};
}

// Per sample s of [0, B] (B: the frame) and axis: gram = AᵀA and cross = AᵀR (n×n, row-major),
// sums = Aᵀ1 (n), at out + s·(2n² + n). Block s, one thread per entry.
template <typename acc_t>
__global__ void axis_products_kernel(const int64_t* __restrict__ crops,
                                     const bool* __restrict__ flips, int64_t batch, int64_t size,
                                     int64_t n, int axis, acc_t* __restrict__ out) {
  const int64_t s = blockIdx.x;
  const bool frame = s == batch;
  const Axis ax{n, size, frame ? 0 : crops[4 * s + axis], frame ? size : crops[4 * s + 2 + axis],
                !frame && axis == 1 && flips[s]};
  acc_t* gram = out + s * (2 * n * n + n);
  acc_t* cross = gram + n * n;
  acc_t* sums = cross + n * n;
  for (int64_t item = threadIdx.x; item < 2 * n * n + n; item += blockDim.x) {
    const int64_t m = item < 2 * n * n ? (item % (n * n)) / n : item - 2 * n * n;
    const int64_t q = item % n;
    const Window rows = ax.crop_window(m);
    acc_t total = 0;
    if (item < n * n) {
      const Window both = intersect(rows, ax.crop_window(q));
      for (int64_t k = both.begin; k < both.end; ++k) {
        total += ax.crop_weight<acc_t>(k, m) * ax.crop_weight<acc_t>(k, q);
      }
      gram[item] = total;
    } else if (item < 2 * n * n) {
      const Window both = intersect(rows, tap_window(q, n, size));
      for (int64_t k = both.begin; k < both.end; ++k) {
        total += ax.crop_weight<acc_t>(k, m) * ax.frame_weight<acc_t>(k, q);
      }
      cross[m * n + q] = total;
    } else {
      for (int64_t k = rows.begin; k < rows.end; ++k) {
        total += ax.crop_weight<acc_t>(k, m);
      }
      sums[m] = total;
    }
  }
}

// ---- batched small matmuls -----------------------------------------------------------------

// A strided matrix per sample: element (r, c) of sample s at data[s·batch + r·row + c·col].
template <typename acc_t>
struct Mat {
  const acc_t* data;
  int64_t batch;
  int64_t row;
  int64_t col;

  __device__ acc_t at(int64_t s, int64_t r, int64_t c) const {
    return data[s * batch + r * row + c * col];
  }
};

// out[s] (m×n, contiguous) = a[s] (m×k) · b[s] (k×n), one thread per entry, l in order.
template <typename acc_t>
__global__ void batched_matmul_kernel(Mat<acc_t> a, Mat<acc_t> b, acc_t* __restrict__ out,
                                      int64_t count, int64_t m, int64_t k, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count * m * n;
       i += stride) {
    const int64_t s = i / (m * n);
    const int64_t r = (i - s * m * n) / n;
    const int64_t c = i - s * m * n - r * n;
    acc_t total = 0;
    for (int64_t l = 0; l < k; ++l) {
      total += a.at(s, r, l) * b.at(s, l, c);
    }
    out[i] = total;
  }
}

// ---- the problem ---------------------------------------------------------------------------

// τ: `device`, temperature_tensor in acc_t (a learnable temperature), or else `value`.
template <typename acc_t>
struct Temperature {
  acc_t value;
  const acc_t* device;

  __device__ acc_t get() const { return device != nullptr ? *device : value; }
};

template <typename acc_t>
struct Problem {
  int64_t batch;
  int64_t h;
  int64_t w;
  int64_t size;
  Temperature<acc_t> temperature;
  const acc_t* orig;  // [B, h·w]
  const acc_t* aug;   // [B, h·w]
  const acc_t* rows;  // [B + 1, 2h² + h]: AᵀA, AᵀR_h, Aᵀ1 per sample; K_h, ·, r_h last
  const acc_t* cols;  // [B + 1, 2w² + w]
  cudaStream_t stream;

  __host__ __device__ int64_t pixels() const { return h * w; }
  __host__ __device__ int64_t row_stride() const { return 2 * h * h + h; }
  __host__ __device__ int64_t col_stride() const { return 2 * w * w + w; }
  __host__ __device__ const acc_t* row_sums(int64_t s) const { return rows + s * row_stride() + 2 * h * h; }
  __host__ __device__ const acc_t* col_sums(int64_t s) const { return cols + s * col_stride() + 2 * w * w; }

  // The h×h matrix `which` (0: gram, 1: cross) of the row axis, per sample or the frame's.
  Mat<acc_t> row_matrix(int which, bool frame, bool transpose) const {
    const acc_t* base = rows + (frame ? batch * row_stride() : 0) + which * h * h;
    return {base, frame ? 0 : row_stride(), transpose ? 1 : h, transpose ? h : 1};
  }

  Mat<acc_t> col_matrix(int which, bool frame, bool transpose) const {
    const acc_t* base = cols + (frame ? batch * col_stride() : 0) + which * w * w;
    return {base, frame ? 0 : col_stride(), transpose ? 1 : w, transpose ? w : 1};
  }

  Mat<acc_t> maps(const acc_t* data) const { return {data, pixels(), w, 1}; }

  // out[s] = left[s] · map[s] · right[s] for every sample, through scratch (both [B, h·w]).
  void sandwich(Mat<acc_t> left, const acc_t* map, Mat<acc_t> right, acc_t* scratch,
                acc_t* out) const {
    const unsigned blocks = grid_for(batch * pixels());
    batched_matmul_kernel<<<blocks, kMapThreads, 0, stream>>>(left, maps(map), scratch, batch, h,
                                                              h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    batched_matmul_kernel<<<blocks, kMapThreads, 0, stream>>>(maps(scratch), right, out, batch, h,
                                                              w, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Per-sample statistics, [kStats, B].
enum Stat { kSigmaOrig, kSigmaAug, kSumX, kSumY, kXX, kXY, kNormU, kNormV, kPositive, kStats };

// Block b: the sums and inner products of sample b (the first six statistics).
template <typename acc_t>
__global__ void sample_stats_kernel(Problem<acc_t> p, const acc_t* __restrict__ self_term,
                                    const acc_t* __restrict__ cross_term, acc_t* __restrict__ stats) {
  const int64_t b = blockIdx.x;
  const int64_t pixels = p.pixels();
  const acc_t* c = p.orig + b * pixels;
  const acc_t* c_aug = p.aug + b * pixels;
  const acc_t* frame_rows = p.row_sums(p.batch);
  const acc_t* frame_cols = p.col_sums(p.batch);
  const acc_t* crop_rows = p.row_sums(b);
  const acc_t* crop_cols = p.col_sums(b);
  acc_t sum_orig = 0, sum_aug = 0, sum_x = 0, xx = 0, xy = 0;
  for (int64_t i = threadIdx.x; i < pixels; i += blockDim.x) {
    const int64_t r = i / p.w;
    const int64_t q = i - r * p.w;
    const acc_t frame = frame_rows[r] * frame_cols[q];
    sum_orig += c[i] * frame;
    sum_aug += c_aug[i] * frame;
    sum_x += c[i] * (crop_rows[r] * crop_cols[q]);
    xx += c[i] * self_term[b * pixels + i];
    xy += c[i] * cross_term[b * pixels + i];
  }
  const acc_t eps = map_eps<acc_t>();
  sum_orig = block_reduce_sum(sum_orig);
  sum_aug = block_reduce_sum(sum_aug);
  sum_x = block_reduce_sum(sum_x);
  xx = block_reduce_sum(xx);
  xy = block_reduce_sum(xy);
  if (threadIdx.x == 0) {
    stats[kSigmaOrig * p.batch + b] = sum_orig + eps;
    stats[kSigmaAug * p.batch + b] = sum_aug + eps;
    stats[kSumX * p.batch + b] = sum_x;
    stats[kSumY * p.batch + b] = sum_aug;
    stats[kXX * p.batch + b] = xx;
    stats[kXY * p.batch + b] = xy;
  }
}

// One warp per (b, j): yy[b·B + j] = ⟨c'_b, Z_j⟩.
template <typename acc_t>
__global__ void gram_kernel(const acc_t* __restrict__ aug, const acc_t* __restrict__ z,
                            acc_t* __restrict__ yy, int64_t batch, int64_t pixels) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarpSize;
       e < batch * batch; e += warps) {
    const int64_t b = e / batch;
    const int64_t j = e - b * batch;
    acc_t total = 0;
    for (int64_t i = lane; i < pixels; i += kWarpSize) {
      total += aug[b * pixels + i] * z[j * pixels + i];
    }
    total = warp_reduce_sum(total);
    if (lane == 0) {
      yy[e] = total;
    }
  }
}

// The cosines of the logits, from the statistics.
template <typename acc_t>
struct Cosines {
  const acc_t* stats;
  const acc_t* yy;
  int64_t batch;
  acc_t count;  // size²

  __device__ acc_t at(int stat, int64_t b) const { return stats[stat * batch + b]; }

  // cos(v_b, v_j) from ⟨Y_b, Y_j⟩ = yy[b, j].
  __device__ acc_t negative(int64_t b, int64_t j) const {
    const acc_t vv = normalized_map_inner(yy[b * batch + j], at(kSumY, b), at(kSumY, j),
                                          at(kSigmaAug, b), at(kSigmaAug, j), count);
    return vv / (at(kNormV, b) * at(kNormV, j));
  }
};

// One thread per sample: ‖u_b‖, ‖v_b‖ and cos(u_b, v_b).
template <typename acc_t>
__global__ void norms_kernel(Cosines<acc_t> cos, acc_t* __restrict__ stats) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= cos.batch) {
    return;
  }
  const acc_t sx = cos.at(kSumX, b), sy = cos.at(kSumY, b);
  const acc_t so = cos.at(kSigmaOrig, b), sa = cos.at(kSigmaAug, b);
  const acc_t nu = std::sqrt(normalized_map_inner(cos.at(kXX, b), sx, sx, so, so, cos.count));
  const acc_t nv = std::sqrt(
      normalized_map_inner(cos.yy[b * cos.batch + b], sy, sy, sa, sa, cos.count));
  const acc_t uv = normalized_map_inner(cos.at(kXY, b), sx, sy, so, sa, cos.count);
  stats[kNormU * cos.batch + b] = nu;
  stats[kNormV * cos.batch + b] = nv;
  stats[kPositive * cos.batch + b] = uv / (nu * nv);
}

// Block b: lse[b] = log Σ exp(logits_b) (max subtracted) and row_loss[b] = lse[b] − logits_b0.
template <typename acc_t>
__global__ void row_lse_kernel(Cosines<acc_t> cos, Temperature<acc_t> tau,
                               acc_t* __restrict__ lse, acc_t* __restrict__ row_loss) {
  const int64_t b = blockIdx.x;
  const acc_t temperature = tau.get();
  const acc_t positive = cos.at(kPositive, b) / temperature;
  acc_t max = positive;
  for (int64_t j = threadIdx.x; j < cos.batch; j += blockDim.x) {
    max = j == b ? max : std::max(max, cos.negative(b, j) / temperature);
  }
  max = block_reduce_max(max);
  acc_t total = 0;
  for (int64_t j = threadIdx.x; j < cos.batch; j += blockDim.x) {
    total += j == b ? acc_t(0) : std::exp(cos.negative(b, j) / temperature - max);
  }
  total = block_reduce_sum(total) + std::exp(positive - max);
  if (threadIdx.x == 0) {
    lse[b] = max + std::log(total);
    row_loss[b] = lse[b] - positive;
  }
}

// One block: loss = mean of row_loss.
template <typename acc_t>
__global__ void mean_kernel(const acc_t* __restrict__ row_loss, int64_t batch,
                            acc_t* __restrict__ loss) {
  acc_t total = 0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    total += row_loss[b];
  }
  total = block_reduce_sum(total);
  if (threadIdx.x == 0) {
    *loss = total / static_cast<acc_t>(batch);
  }
}

// ---- backward coefficients -----------------------------------------------------------------

enum Coefficient { kAlpha, kBeta, kOmegaSum, kOmegaGram, kRowTau, kCoefficients };

// Block b, with scale = grad / (B·τ): the softmax gradients of rows b and j, then α_b, β_b and
// row b of Ω/σ' (omega [B, B]), Σ_j Ω_bj, Σ_j Ω_bj ⟨Y_j, Y_b⟩/σ'_j (the CPU's formulas) and
// row b's Σ_j (∂L/∂logit_bj / τ)·cos_bj, the part of ∂L/∂τ·(−τ).
template <typename acc_t>
__global__ void coefficients_kernel(Cosines<acc_t> cos, Temperature<acc_t> temperature,
                                    const acc_t* __restrict__ lse, const acc_t* __restrict__ grad,
                                    acc_t* __restrict__ omega, acc_t* __restrict__ coefficients) {
  const int64_t b = blockIdx.x;
  const int64_t batch = cos.batch;
  const acc_t tau = temperature.get();
  const acc_t scale = *grad / (static_cast<acc_t>(batch) * tau);
  const acc_t positive = cos.at(kPositive, b);
  const acc_t d_positive = (std::exp(positive / tau - lse[b]) - acc_t(1)) * scale;
  const acc_t nu = cos.at(kNormU, b), nv = cos.at(kNormV, b);
  acc_t* row = omega + b * batch;
  acc_t diagonal = 0, row_tau = 0;
  for (int64_t j = threadIdx.x; j < batch; j += blockDim.x) {
    if (j == b) {
      continue;
    }
    const acc_t negative = cos.negative(b, j);
    const acc_t d_negative = std::exp(negative / tau - lse[b]) * scale;
    // cos(v_b, v_j) = cos(v_j, v_b) enters rows b and j.
    const acc_t weight = d_negative + std::exp(cos.negative(j, b) / tau - lse[j]) * scale;
    row[j] = weight / (nv * cos.at(kNormV, j));
    diagonal += weight * negative;
    row_tau += d_negative * negative;
  }
  diagonal = block_reduce_sum(diagonal) + d_positive * positive;
  row_tau = block_reduce_sum(row_tau) + d_positive * positive;
  const acc_t self = -diagonal / (nv * nv);
  acc_t omega_sum = 0, omega_gram = 0;
  for (int64_t j = threadIdx.x; j < batch; j += blockDim.x) {
    const acc_t value = j == b ? self : row[j];
    omega_sum += value;
    const acc_t scaled = value / cos.at(kSigmaAug, j);
    row[j] = scaled;
    omega_gram += scaled * cos.yy[j * batch + b];
  }
  omega_sum = block_reduce_sum(omega_sum);
  omega_gram = block_reduce_sum(omega_gram);
  if (threadIdx.x == 0) {
    coefficients[kAlpha * batch + b] = d_positive / (nu * nv);
    coefficients[kBeta * batch + b] = -d_positive * positive / (nu * nu);
    coefficients[kOmegaSum * batch + b] = omega_sum;
    coefficients[kOmegaGram * batch + b] = omega_gram;
    coefficients[kRowTau * batch + b] = row_tau;
  }
}

// One block: ∂L/∂τ = −(Σ_b row_tau[b]) / τ, the rows in a fixed order.
template <typename acc_t>
__global__ void temperature_grad_kernel(const acc_t* __restrict__ row_tau, int64_t batch,
                                        Temperature<acc_t> tau, acc_t* __restrict__ out) {
  acc_t total = 0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    total += row_tau[b];
  }
  total = block_reduce_sum(total);
  if (threadIdx.x == 0) {
    *out = -total / tau.get();
  }
}

// One thread per (b, pixel): out[b, i] = Σ_j omega[b, j]·z[j, i], j in order.
template <typename acc_t>
__global__ void omega_z_kernel(const acc_t* __restrict__ omega, const acc_t* __restrict__ z,
                               acc_t* __restrict__ out, int64_t batch, int64_t pixels) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       e < batch * pixels; e += stride) {
    const int64_t b = e / pixels;
    const int64_t i = e - b * pixels;
    acc_t total = 0;
    for (int64_t j = 0; j < batch; ++j) {
      total += omega[b * batch + j] * z[j * pixels + i];
    }
    out[e] = total;
  }
}

// The terms the pull-back reads; a null pointer marks a gradient not asked for.
template <typename acc_t>
struct PullBack {
  const acc_t* stats;
  const acc_t* coefficients;
  const acc_t* self_term;   // Aᵀ X B
  const acc_t* cross_term;  // Aᵀ Y B
  const acc_t* back_term;   // R_hᵀ X R_w
  acc_t* grad_orig;         // [B, h·w]
  acc_t* grad_aug;          // [B, h·w], holding Σ_j (Ω_bj/σ'_j) Z_j on entry
};

// One thread per (b, pixel (r, q)): dL/dc and dL/dc' (the CPU's pull_back).
template <typename acc_t>
__global__ void pull_back_kernel(Problem<acc_t> p, PullBack<acc_t> g) {
  const int64_t batch = p.batch;
  const int64_t pixels = p.pixels();
  const acc_t eps = map_eps<acc_t>();
  const acc_t* row_sums = p.row_sums(batch);
  const acc_t* col_sums = p.col_sums(batch);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       e < batch * pixels; e += stride) {
    const int64_t b = e / pixels;
    const int64_t r = (e - b * pixels) / p.w;
    const int64_t q = e - b * pixels - r * p.w;
    const auto stat = [&](int which) { return g.stats[which * batch + b]; };
    const auto coef = [&](int which) { return g.coefficients[which * batch + b]; };
    const acc_t alpha = coef(kAlpha), beta = coef(kBeta);
    const acc_t sigma = stat(kSigmaOrig), sigma_aug = stat(kSigmaAug);
    const acc_t frame = row_sums[r] * col_sums[q];
    if (g.grad_orig != nullptr) {
      const acc_t u_dot_x = alpha * (stat(kXY) / sigma_aug + eps * stat(kSumX)) +
                            beta * (stat(kXX) / sigma + eps * stat(kSumX));
      const acc_t crop_coef = (alpha + beta) * eps / sigma;
      const acc_t frame_coef = -u_dot_x / (sigma * sigma);
      g.grad_orig[e] =
          (alpha * g.cross_term[e] / sigma_aug + beta * g.self_term[e] / sigma) / sigma +
          crop_coef * p.row_sums(b)[r] * p.col_sums(b)[q] + frame_coef * frame;
    }
    if (g.grad_aug != nullptr) {
      const acc_t v_dot_y = alpha * (stat(kXY) / sigma + eps * stat(kSumY)) + coef(kOmegaGram) +
                            coef(kOmegaSum) * eps * stat(kSumY);
      const acc_t aug_coef =
          eps * (alpha + coef(kOmegaSum)) / sigma_aug - v_dot_y / (sigma_aug * sigma_aug);
      g.grad_aug[e] = (alpha * g.back_term[e] / sigma + g.grad_aug[e]) / sigma_aug +
                      aug_coef * frame;
    }
  }
}

// ---- host side -----------------------------------------------------------------------------

// The device buffers of one call: inputs in acc_t, the axis matrices and the statistics.
struct Buffers {
  at::Tensor orig, aug, crops, flips, rows, cols;
  at::Tensor scratch, self_term, cross_term, z, yy, stats, lse, row_loss;
  at::Tensor tau;  // [1]: temperature_tensor in acc_t, or undefined

  Buffers(const at::Tensor& cam_orig, const at::Tensor& cam_aug, const at::Tensor& crop_boxes,
          const at::Tensor& flip_flags, const std::optional<at::Tensor>& temperature_tensor) {
    const auto options = cam_orig.options().dtype(accumulation_dtype(cam_orig));
    if (temperature_tensor.has_value()) {
      tau = temperature_tensor->reshape({1}).to(options).contiguous();
    }
    const int64_t batch = cam_orig.size(0);
    const int64_t h = cam_orig.size(1);
    const int64_t w = cam_orig.size(2);
    orig = cam_orig.to(options).contiguous();
    aug = cam_aug.to(options).contiguous();
    crops = crop_boxes.to(at::kLong).contiguous();
    flips = flip_flags.to(at::kBool).contiguous();
    rows = at::empty({batch + 1, 2 * h * h + h}, options);
    cols = at::empty({batch + 1, 2 * w * w + w}, options);
    scratch = at::empty({batch, h * w}, options);
    self_term = at::empty_like(scratch);
    cross_term = at::empty_like(scratch);
    z = at::empty_like(scratch);
    yy = at::empty({batch, batch}, options);
    stats = at::empty({kStats, batch}, options);
    lse = at::empty({batch}, options);
    row_loss = at::empty({batch}, options);
  }
};

template <typename acc_t>
Cosines<acc_t> cosines(const Buffers& buf, const Problem<acc_t>& p) {
  return {buf.stats.const_data_ptr<acc_t>(), buf.yy.const_data_ptr<acc_t>(), p.batch,
          static_cast<acc_t>(p.size) * static_cast<acc_t>(p.size)};
}

// The forward's statistics: axis matrices, sandwiches, sums, the Gram, norms and row LSEs.
template <typename acc_t>
Problem<acc_t> forward_statistics(Buffers& buf, double temperature, int64_t size,
                                  cudaStream_t stream) {
  const int64_t batch = buf.orig.size(0);
  const Problem<acc_t> p{batch,
                         buf.orig.size(1),
                         buf.orig.size(2),
                         size,
                         {static_cast<acc_t>(temperature),
                          buf.tau.defined() ? buf.tau.const_data_ptr<acc_t>() : nullptr},
                         buf.orig.const_data_ptr<acc_t>(),
                         buf.aug.const_data_ptr<acc_t>(),
                         buf.rows.const_data_ptr<acc_t>(),
                         buf.cols.const_data_ptr<acc_t>(),
                         stream};
  const auto blocks = static_cast<unsigned>(batch + 1);
  axis_products_kernel<<<blocks, kMapThreads, 0, stream>>>(
      buf.crops.const_data_ptr<int64_t>(), buf.flips.const_data_ptr<bool>(), batch, size, p.h, 0,
      buf.rows.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  axis_products_kernel<<<blocks, kMapThreads, 0, stream>>>(
      buf.crops.const_data_ptr<int64_t>(), buf.flips.const_data_ptr<bool>(), batch, size, p.w, 1,
      buf.cols.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  acc_t* scratch = buf.scratch.mutable_data_ptr<acc_t>();
  p.sandwich(p.row_matrix(0, false, false), p.orig, p.col_matrix(0, false, false), scratch,
             buf.self_term.mutable_data_ptr<acc_t>());
  p.sandwich(p.row_matrix(1, false, false), p.aug, p.col_matrix(1, false, true), scratch,
             buf.cross_term.mutable_data_ptr<acc_t>());
  p.sandwich(p.row_matrix(0, true, false), p.aug, p.col_matrix(0, true, false), scratch,
             buf.z.mutable_data_ptr<acc_t>());
  acc_t* stats = buf.stats.mutable_data_ptr<acc_t>();
  sample_stats_kernel<<<static_cast<unsigned>(batch), kMapThreads, 0, stream>>>(
      p, buf.self_term.const_data_ptr<acc_t>(), buf.cross_term.const_data_ptr<acc_t>(), stats);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto warp_blocks = static_cast<unsigned>(
      std::clamp<int64_t>(ceil_div(batch * batch, kRowsPerBlock), 1, kMaxBlocks));
  gram_kernel<<<warp_blocks, kMapThreads, 0, stream>>>(p.aug, buf.z.const_data_ptr<acc_t>(),
                                                       buf.yy.mutable_data_ptr<acc_t>(), batch,
                                                       p.pixels());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const Cosines<acc_t> cos = cosines(buf, p);
  norms_kernel<<<static_cast<unsigned>(ceil_div(batch, kMapThreads)), kMapThreads, 0, stream>>>(
      cos, stats);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  row_lse_kernel<<<static_cast<unsigned>(batch), kMapThreads, 0, stream>>>(
      cos, p.temperature, buf.lse.mutable_data_ptr<acc_t>(),
      buf.row_loss.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p;
}

at::Tensor cgc_loss_fwd_cuda(const at::Tensor& cam_orig, const at::Tensor& cam_aug,
                             const at::Tensor& crops, const at::Tensor& flips,
                             const std::optional<at::Tensor>& temperature_tensor,
                             double temperature, int64_t size) {
  cgc_loss_check_inputs(kFwd, cam_orig, cam_aug, crops, flips, temperature_tensor, temperature,
                        size, /*same_device=*/true);
  const auto acc_dtype = accumulation_dtype(cam_orig);
  const c10::cuda::CUDAGuard guard(cam_orig.device());
  const int64_t batch = cam_orig.size(0);
  if (batch == 0) {
    return at::zeros({}, cam_orig.options().dtype(acc_dtype));
  }
  Buffers buf(cam_orig, cam_aug, crops, flips, temperature_tensor);
  at::Tensor loss = at::empty({}, buf.orig.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kFwd, [&] {
    using acc_t = scalar_t;
    forward_statistics<acc_t>(buf, temperature, size, stream);
    mean_kernel<<<1, kMapThreads, 0, stream>>>(buf.row_loss.const_data_ptr<acc_t>(), batch,
                                               loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cgc_loss_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& cam_orig, const at::Tensor& cam_aug,
    const at::Tensor& crops, const at::Tensor& flips,
    const std::optional<at::Tensor>& temperature_tensor, double temperature, int64_t size,
    const c10::List<bool>& output_mask) {
  const auto [want_orig, want_aug, want_tau] =
      cgc_loss_check_backward(kBwd, grad, cam_orig, cam_aug, crops, flips, temperature_tensor,
                              temperature, size, output_mask, /*same_device=*/true);
  const auto acc_dtype = accumulation_dtype(cam_orig);
  const c10::cuda::CUDAGuard guard(cam_orig.device());
  const int64_t batch = cam_orig.size(0);
  at::Tensor grad_orig = at::empty({0}, cam_orig.options());
  at::Tensor grad_aug = at::empty({0}, cam_aug.options());
  at::Tensor tau_acc = want_tau ? at::zeros({}, cam_orig.options().dtype(acc_dtype)) : at::Tensor();
  if (batch == 0 || !(want_orig || want_aug || want_tau)) {
    return {want_orig ? at::zeros_like(cam_orig) : grad_orig,
            want_aug ? at::zeros_like(cam_aug) : grad_aug,
            cgc_loss_temperature_grad(cam_orig, temperature_tensor, tau_acc)};
  }
  Buffers buf(cam_orig, cam_aug, crops, flips, temperature_tensor);
  const auto options = buf.orig.options();
  const at::Tensor upstream = grad.reshape({1}).to(options);
  const int64_t pixels = buf.orig.size(1) * buf.orig.size(2);
  at::Tensor orig_acc = want_orig ? at::empty({batch, pixels}, options) : at::Tensor();
  at::Tensor aug_acc = want_aug ? at::empty({batch, pixels}, options) : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kBwd, [&] {
    using acc_t = scalar_t;
    const Problem<acc_t> p = forward_statistics<acc_t>(buf, temperature, size, stream);
    at::Tensor omega = at::empty({batch, batch}, options);
    at::Tensor coefficients = at::empty({kCoefficients, batch}, options);
    coefficients_kernel<<<static_cast<unsigned>(batch), kMapThreads, 0, stream>>>(
        cosines(buf, p), p.temperature, buf.lse.const_data_ptr<acc_t>(),
        upstream.const_data_ptr<acc_t>(), omega.mutable_data_ptr<acc_t>(),
        coefficients.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (want_tau) {
      temperature_grad_kernel<<<1, kMapThreads, 0, stream>>>(
          coefficients.const_data_ptr<acc_t>() + kRowTau * batch, batch, p.temperature,
          tau_acc.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (!(want_orig || want_aug)) {
      return;
    }
    PullBack<acc_t> terms{buf.stats.const_data_ptr<acc_t>(),
                          coefficients.const_data_ptr<acc_t>(),
                          buf.self_term.const_data_ptr<acc_t>(),
                          buf.cross_term.const_data_ptr<acc_t>(),
                          nullptr,
                          want_orig ? orig_acc.mutable_data_ptr<acc_t>() : nullptr,
                          want_aug ? aug_acc.mutable_data_ptr<acc_t>() : nullptr};
    at::Tensor back_term;
    if (want_aug) {
      omega_z_kernel<<<grid_for(batch * pixels), kMapThreads, 0, stream>>>(
          omega.const_data_ptr<acc_t>(), buf.z.const_data_ptr<acc_t>(), terms.grad_aug, batch,
          pixels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      back_term = at::empty({batch, pixels}, options);
      p.sandwich(p.row_matrix(1, false, true), p.orig, p.col_matrix(1, false, false),
                 buf.scratch.mutable_data_ptr<acc_t>(), back_term.mutable_data_ptr<acc_t>());
      terms.back_term = back_term.const_data_ptr<acc_t>();
    }
    pull_back_kernel<<<grid_for(batch * pixels), kMapThreads, 0, stream>>>(p, terms);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (want_orig) {
    grad_orig = orig_acc.view(cam_orig.sizes()).to(cam_orig.scalar_type());
  }
  if (want_aug) {
    grad_aug = aug_acc.view(cam_aug.sizes()).to(cam_aug.scalar_type());
  }
  return {grad_orig, grad_aug, cgc_loss_temperature_grad(cam_orig, temperature_tensor, tau_acc)};
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("cgc_loss_fwd", &cgc_loss_fwd_cuda);
  m.impl("cgc_loss_bwd", &cgc_loss_bwd_cuda);
}

}  // namespace amc_kernels::cuda
