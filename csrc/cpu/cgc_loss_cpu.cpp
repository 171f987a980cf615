// cgc_loss_fwd and cgc_loss_bwd on CPU: the CGC loss of docs/design.md#26-cgc_loss, exactly, on the
// native h×w maps. No size×size map exists, forward or backward.
//
// Formula. R_h (size×h) and R_w (size×w) are the bilinear resizes to size (align_corners=False),
// r = Rᵀ1 and K = RᵀR per axis. Sample b's crop (i, j, ch, cw) and flip give
// A_b = Resize_{ch→size}·Select_{i..i+ch}·R_h (size×h) and B_b = Flip·Resize_{cw→size}·
// Select_{j..j+cw}·R_w (size×w), built row by row from cropped_resize_taps (math.h). With
// ε = map_eps (math.h), J the all-ones size×size map, X_b = A_b c_b B_bᵀ and Y_b = R_h c'_b R_wᵀ:
//   σ_b = r_hᵀ c_b r_w + ε,  σ'_b = r_hᵀ c'_b r_w + ε,  u_b = X_b/σ_b + εJ,  v_b = Y_b/σ'_b + εJ
// (crop and resize keep a constant map constant). Every inner product is an h×w sandwich:
//   ⟨X, X⟩ = ⟨c, (AᵀA) c (BᵀB)⟩,  ⟨X, Y⟩ = ⟨c, (AᵀR_h) c' (R_wᵀB)⟩,  ⟨Y_b, Y_j⟩ = ⟨c'_b, K_h c'_j K_w⟩,
//   ΣX = (Aᵀ1)ᵀ c (Bᵀ1),  ΣY = r_hᵀ c' r_w,  and ⟨u, v⟩ = normalized_map_inner(⟨X, Y⟩, ΣX, ΣY, σ, σ').
// logits_b = [cos(u_b, v_b), cos(v_b, v_j) for j ≠ b] / τ; loss = mean_b (lse_b − logits_b0).
// τ is the float temperature or the 0-d temperature_tensor; then ∂L/∂τ = −(1/τ)·Σ_bj
// (∂L/∂logit_bj)·cos_bj, summed over the rows in order.
// Backward: dL/du_b = α_b v_b + β_b u_b and dL/dv_b = α_b u_b + Σ_j Ω_bj v_j (the cosine chain
// rule), pulled back through the affine maps: dL/dc = Aᵀ(dL/du)B/σ − ⟨dL/du, X⟩/σ²·r_h r_wᵀ, and
// dL/dc' likewise with R_h, R_w and σ'. A gradient that output_mask leaves out is not computed:
// dL/dc alone skips the Ω GEMM and the R_hᵀ X R_w sandwich, dL/dc' alone the Aᵀ X B and Aᵀ Y B
// sandwiches.
//
// Mapping: at::parallel_for over samples, each building its crop's h×h and w×w matrices from four
// bilinear taps per output row and its h×w sandwich products in thread-local scratch; BLAS GEMMs
// for the B×B Gram C'·Zᵀ with Z_b = K_h c'_b K_w and for (Ω/σ')·Z; an O(B²) softmax epilogue
// over row blocks. The backward recomputes every statistic. Memory: O(B·h·w + B²), plus h×h and
// w×w scratch per thread. Accumulation: acc_type (fp32; fp64 for fp64 maps); fp16 and bf16 maps
// are converted once (they are h×w, not size×size).
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "amc_kernels/checks.h"
#include "amc_kernels/checks_cgc_loss.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kFwd = "cgc_loss_fwd";
constexpr const char* kBwd = "cgc_loss_bwd";
// Operations per parallel task: smaller jobs run inline, where starting threads costs more.
constexpr int64_t kWorkPerTask = int64_t(1) << 16;

// The grain of at::parallel_for for items of `work` operations each.
int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, work));
}

// ---- small dense matrices (row-major) --------------------------------------------------------

// A read-only matrix with strides, so that a transpose is a view.
template <typename acc_t>
struct MatrixView {
  const acc_t* data;
  int64_t row_stride;
  int64_t col_stride;

  acc_t at(int64_t r, int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

template <typename acc_t>
MatrixView<acc_t> matrix(const acc_t* data, int64_t cols) {
  return {data, cols, 1};
}

template <typename acc_t>
MatrixView<acc_t> transposed(const acc_t* data, int64_t cols) {
  return {data, 1, cols};
}

// out (m×n) = a (m×k) · b (k×n).
template <typename acc_t>
void multiply(MatrixView<acc_t> a, MatrixView<acc_t> b, int64_t m, int64_t k, int64_t n,
              acc_t* out) {
  std::fill(out, out + m * n, acc_t(0));
  for (int64_t i = 0; i < m; ++i) {
    acc_t* row = out + i * n;
    for (int64_t l = 0; l < k; ++l) {
      const acc_t a_il = a.at(i, l);
      for (int64_t j = 0; j < n; ++j) {
        row[j] += a_il * b.at(l, j);
      }
    }
  }
}

// out (h×w) = left (h×h) · map (h×w) · right (w×w), through `scratch` (h×w).
template <typename acc_t>
void sandwich(MatrixView<acc_t> left, const acc_t* map, MatrixView<acc_t> right, int64_t h,
              int64_t w, acc_t* scratch, acc_t* out) {
  multiply(left, matrix(map, w), h, h, w, scratch);
  multiply(matrix(scratch, w), right, h, w, w, out);
}

template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t count) {
  acc_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    total += a[i] * b[i];
  }
  return total;
}

// leftᵀ · map · right for a map (h×w) and vectors left (h), right (w).
template <typename acc_t>
acc_t bilinear_form(const acc_t* left, const acc_t* map, const acc_t* right, int64_t h,
                    int64_t w) {
  acc_t total = 0;
  for (int64_t i = 0; i < h; ++i) {
    total += left[i] * dot(map + i * w, right, w);
  }
  return total;
}

// ---- per-axis interpolation matrices ---------------------------------------------------------

// For one axis of n samples with R the resize n → size and A = Resize_{len→size}·
// Select_{start..start+len}·R (rows reversed when flipped): AᵀA, AᵀR (n×n) and Aᵀ1 (n), summed
// over the size rows of A, four taps each. The identity crop (0, size, unflipped) has A = R, so
// it gives K, K and r.
template <typename acc_t>
struct AxisProducts {
  int64_t n;
  std::vector<acc_t> gram;   // AᵀA
  std::vector<acc_t> cross;  // AᵀR
  std::vector<acc_t> sums;   // Aᵀ1

  explicit AxisProducts(int64_t samples)
      : n(samples), gram(samples * samples), cross(samples * samples), sums(samples) {}

  void compute(int64_t size, int64_t start, int64_t len, bool flip) {
    std::fill(gram.begin(), gram.end(), acc_t(0));
    std::fill(cross.begin(), cross.end(), acc_t(0));
    std::fill(sums.begin(), sums.end(), acc_t(0));
    for (int64_t k = 0; k < size; ++k) {
      const CroppedTaps<acc_t> a = cropped_resize_taps<acc_t>(k, start, len, flip, n, size);
      const LinearTap<acc_t> r = linear_tap<acc_t>(k, n, size);
      for (int p = 0; p < 4; ++p) {
        acc_t* gram_row = gram.data() + a.index[p] * n;
        acc_t* cross_row = cross.data() + a.index[p] * n;
        sums[a.index[p]] += a.weight[p];
        cross_row[r.i0] += a.weight[p] * r.w0;
        cross_row[r.i1] += a.weight[p] * r.w1;
        for (int q = 0; q < 4; ++q) {
          gram_row[a.index[q]] += a.weight[p] * a.weight[q];
        }
      }
    }
  }
};

// ---- the problem and its statistics ------------------------------------------------------------

// Validated inputs in acc_t (contiguous [B, h, w] maps), and the uncropped axes (K and r).
template <typename acc_t>
struct CgcProblem {
  int64_t batch;
  int64_t h;
  int64_t w;
  int64_t size;
  acc_t temperature;
  const acc_t* orig;
  const acc_t* aug;
  const int64_t* crops;  // [B, 4]: i, j, ch, cw
  const bool* flips;
  AxisProducts<acc_t> rows;
  AxisProducts<acc_t> cols;

  CgcProblem(const at::Tensor& orig_maps, const at::Tensor& aug_maps, const at::Tensor& crop_boxes,
             const at::Tensor& flip_flags, acc_t tau, int64_t frame)
      : batch(orig_maps.size(0)),
        h(orig_maps.size(1)),
        w(orig_maps.size(2)),
        size(frame),
        temperature(tau),
        orig(orig_maps.const_data_ptr<acc_t>()),
        aug(aug_maps.const_data_ptr<acc_t>()),
        crops(crop_boxes.const_data_ptr<int64_t>()),
        flips(flip_flags.const_data_ptr<bool>()),
        rows(orig_maps.size(1)),
        cols(orig_maps.size(2)) {
    rows.compute(size, 0, size, false);
    cols.compute(size, 0, size, false);
  }

  int64_t pixels() const { return h * w; }
  // Operations of one sample: 2 × 28 tap updates per frame row, four h×w sandwiches.
  int64_t sample_work() const { return 56 * size + 4 * pixels() * (h + w); }
  // Operations of one row of the B×B epilogue (an exp and a few divisions per entry).
  int64_t row_work() const { return 16 * batch; }
  const acc_t* orig_map(int64_t b) const { return orig + b * pixels(); }
  const acc_t* aug_map(int64_t b) const { return aug + b * pixels(); }
};

// One thread's scratch: the axis products of the current sample's crop and three h×w products.
template <typename acc_t>
struct SampleWorkspace {
  AxisProducts<acc_t> rows;  // A: AᵀA, AᵀR_h, Aᵀ1
  AxisProducts<acc_t> cols;  // B: BᵀB, BᵀR_w, Bᵀ1
  std::vector<acc_t> scratch;
  std::vector<acc_t> self_term;   // (AᵀA) c (BᵀB) = Aᵀ X B
  std::vector<acc_t> cross_term;  // (AᵀR_h) c' (R_wᵀB) = Aᵀ Y B

  explicit SampleWorkspace(const CgcProblem<acc_t>& p)
      : rows(p.h), cols(p.w), scratch(p.pixels()), self_term(p.pixels()), cross_term(p.pixels()) {}

  void load_crop(const CgcProblem<acc_t>& p, int64_t b) {
    const int64_t* crop = p.crops + 4 * b;
    rows.compute(p.size, crop[0], crop[2], false);
    cols.compute(p.size, crop[1], crop[3], p.flips[b]);
  }

  // self_term and cross_term of sample b (after load_crop).
  void compute_terms(const CgcProblem<acc_t>& p, int64_t b) {
    const acc_t* c = p.orig_map(b);
    sandwich(matrix(rows.gram.data(), p.h), c, matrix(cols.gram.data(), p.w), p.h, p.w,
             scratch.data(), self_term.data());
    sandwich(matrix(rows.cross.data(), p.h), p.aug_map(b), transposed(cols.cross.data(), p.w),
             p.h, p.w, scratch.data(), cross_term.data());
  }
};

// Per-sample sums and inner products of the unnormalised maps X_b = A c Bᵀ, Y_b = R_h c' R_wᵀ.
template <typename acc_t>
struct Statistics {
  std::vector<acc_t> sigma_orig;  // σ_b = ΣR_h c R_wᵀ + ε
  std::vector<acc_t> sigma_aug;   // σ'_b = ΣY_b + ε
  std::vector<acc_t> sum_x;       // ΣX_b
  std::vector<acc_t> sum_y;       // ΣY_b
  std::vector<acc_t> xx;          // ⟨X_b, X_b⟩
  std::vector<acc_t> xy;          // ⟨X_b, Y_b⟩
  at::Tensor z;                   // [B, h·w]: K_h c'_b K_w
  at::Tensor yy;                  // [B, B]: ⟨Y_b, Y_j⟩

  explicit Statistics(int64_t batch)
      : sigma_orig(batch), sigma_aug(batch), sum_x(batch), sum_y(batch), xx(batch), xy(batch) {}
};

template <typename acc_t>
Statistics<acc_t> compute_statistics(const CgcProblem<acc_t>& p, const at::Tensor& aug_flat) {
  Statistics<acc_t> s(p.batch);
  s.z = at::empty_like(aug_flat);
  acc_t* z = s.z.template mutable_data_ptr<acc_t>();
  const acc_t eps = map_eps<acc_t>();
  at::parallel_for(0, p.batch, grain_for(p.sample_work()), [&](int64_t begin, int64_t end) {
    SampleWorkspace<acc_t> ws(p);
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* c = p.orig_map(b);
      const acc_t* c_aug = p.aug_map(b);
      ws.load_crop(p, b);
      ws.compute_terms(p, b);
      s.sigma_orig[b] = bilinear_form(p.rows.sums.data(), c, p.cols.sums.data(), p.h, p.w) + eps;
      s.sum_y[b] = bilinear_form(p.rows.sums.data(), c_aug, p.cols.sums.data(), p.h, p.w);
      s.sigma_aug[b] = s.sum_y[b] + eps;
      s.sum_x[b] = bilinear_form(ws.rows.sums.data(), c, ws.cols.sums.data(), p.h, p.w);
      s.xx[b] = dot(c, ws.self_term.data(), p.pixels());
      s.xy[b] = dot(c, ws.cross_term.data(), p.pixels());
      sandwich(matrix(p.rows.gram.data(), p.h), c_aug, matrix(p.cols.gram.data(), p.w), p.h, p.w,
               ws.scratch.data(), z + b * p.pixels());
    }
  });
  s.yy = at::mm(aug_flat, s.z.t());
  return s;
}

// ---- cosines and the softmax epilogue --------------------------------------------------------

template <typename acc_t>
struct Cosines {
  std::vector<acc_t> norm_u;    // ‖u_b‖
  std::vector<acc_t> norm_v;    // ‖v_b‖
  std::vector<acc_t> positive;  // cos(u_b, v_b)
  std::vector<acc_t> negative;  // [B, B]: cos(v_b, v_j); the diagonal is unused

  explicit Cosines(int64_t batch)
      : norm_u(batch), norm_v(batch), positive(batch), negative(batch * batch) {}
};

template <typename acc_t>
Cosines<acc_t> compute_cosines(const CgcProblem<acc_t>& p, const Statistics<acc_t>& s) {
  const int64_t batch = p.batch;
  const acc_t count = static_cast<acc_t>(p.size) * static_cast<acc_t>(p.size);
  const acc_t* yy = s.yy.template const_data_ptr<acc_t>();
  Cosines<acc_t> cos(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const acc_t sx = s.sum_x[b], sy = s.sum_y[b], so = s.sigma_orig[b], sa = s.sigma_aug[b];
    cos.norm_u[b] = std::sqrt(normalized_map_inner(s.xx[b], sx, sx, so, so, count));
    cos.norm_v[b] = std::sqrt(normalized_map_inner(yy[b * batch + b], sy, sy, sa, sa, count));
    const acc_t uv = normalized_map_inner(s.xy[b], sx, sy, so, sa, count);
    cos.positive[b] = uv / (cos.norm_u[b] * cos.norm_v[b]);
  }
  at::parallel_for(0, batch, grain_for(p.row_work()), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < batch; ++j) {
        const acc_t vv = normalized_map_inner(yy[b * batch + j], s.sum_y[b], s.sum_y[j],
                                              s.sigma_aug[b], s.sigma_aug[j], count);
        cos.negative[b * batch + j] = vv / (cos.norm_v[b] * cos.norm_v[j]);
      }
    }
  });
  return cos;
}

// log Σ exp of row b's logits [positive_b, negative_bj for j ≠ b] / τ, the max subtracted.
template <typename acc_t>
acc_t row_logsumexp(const Cosines<acc_t>& cos, int64_t b, int64_t batch, acc_t temperature) {
  const acc_t* negative = cos.negative.data() + b * batch;
  acc_t max = cos.positive[b] / temperature;
  for (int64_t j = 0; j < batch; ++j) {
    max = j == b ? max : std::max(max, negative[j] / temperature);
  }
  acc_t total = std::exp(cos.positive[b] / temperature - max);
  for (int64_t j = 0; j < batch; ++j) {
    total += j == b ? acc_t(0) : std::exp(negative[j] / temperature - max);
  }
  return max + std::log(total);
}

template <typename acc_t>
acc_t mean_cross_entropy(const CgcProblem<acc_t>& p, const Cosines<acc_t>& cos) {
  std::vector<acc_t> row_loss(p.batch);
  at::parallel_for(0, p.batch, grain_for(p.row_work()), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      row_loss[b] = row_logsumexp(cos, b, p.batch, p.temperature) - cos.positive[b] / p.temperature;
    }
  });
  acc_t total = 0;
  for (const acc_t value : row_loss) {
    total += value;
  }
  return total / static_cast<acc_t>(p.batch);
}

// ---- backward --------------------------------------------------------------------------------

// dL/du_b = α_b v_b + β_b u_b and dL/dv_b = α_b u_b + Σ_j Ω_bj v_j.
template <typename acc_t>
struct Coefficients {
  std::vector<acc_t> alpha;
  std::vector<acc_t> beta;
  at::Tensor omega_scaled;        // [B, B]: Ω_bj / σ'_j
  std::vector<acc_t> omega_sum;   // Σ_j Ω_bj
  std::vector<acc_t> omega_gram;  // Σ_j Ω_bj ⟨Y_j, Y_b⟩ / σ'_j
  acc_t temperature = 0;          // ∂L/∂τ

  explicit Coefficients(int64_t batch)
      : alpha(batch), beta(batch), omega_sum(batch), omega_gram(batch) {}
};

// dL/dlogit over τ: `positive` (B) gets (p_b0 − 1)·scale and `negative` (B×B) p_bj·scale off
// the diagonal, with p the softmax of each row and scale = grad / (B·τ); `row_tau` (B) gets
// Σ_j (dL/dlogit_bj / τ)·cos_bj.
template <typename acc_t>
void cosine_gradients(const CgcProblem<acc_t>& p, const Cosines<acc_t>& cos, acc_t grad,
                      std::vector<acc_t>& positive, std::vector<acc_t>& negative,
                      std::vector<acc_t>& row_tau) {
  const int64_t batch = p.batch;
  const acc_t tau = p.temperature;
  const acc_t scale = grad / (static_cast<acc_t>(batch) * tau);
  at::parallel_for(0, batch, grain_for(p.row_work()), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const acc_t lse = row_logsumexp(cos, b, batch, tau);
      const acc_t* row = cos.negative.data() + b * batch;
      positive[b] = (std::exp(cos.positive[b] / tau - lse) - acc_t(1)) * scale;
      acc_t tau_sum = positive[b] * cos.positive[b];
      for (int64_t j = 0; j < batch; ++j) {
        negative[b * batch + j] = j == b ? acc_t(0) : std::exp(row[j] / tau - lse) * scale;
        tau_sum += negative[b * batch + j] * row[j];
      }
      row_tau[b] = tau_sum;
    }
  });
}

template <typename acc_t>
Coefficients<acc_t> compute_coefficients(const CgcProblem<acc_t>& p, const Statistics<acc_t>& s,
                                         const Cosines<acc_t>& cos, acc_t grad,
                                         const at::TensorOptions& options) {
  const int64_t batch = p.batch;
  std::vector<acc_t> d_positive(batch), d_negative(batch * batch), row_tau(batch);
  cosine_gradients(p, cos, grad, d_positive, d_negative, row_tau);
  Coefficients<acc_t> k(batch);
  for (const acc_t value : row_tau) {  // in order: deterministic
    k.temperature -= value;
  }
  k.temperature /= p.temperature;
  k.omega_scaled = at::empty({batch, batch}, options);
  acc_t* omega_scaled = k.omega_scaled.template mutable_data_ptr<acc_t>();
  const acc_t* yy = s.yy.template const_data_ptr<acc_t>();
  at::parallel_for(0, batch, grain_for(p.row_work()), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const acc_t nu = cos.norm_u[b], nv = cos.norm_v[b];
      k.alpha[b] = d_positive[b] / (nu * nv);
      k.beta[b] = -d_positive[b] * cos.positive[b] / (nu * nu);
      acc_t* omega = omega_scaled + b * batch;
      acc_t diagonal = d_positive[b] * cos.positive[b];
      for (int64_t j = 0; j < batch; ++j) {
        // cos(v_b, v_j) = cos(v_j, v_b) enters rows b and j; the weight is 0 on the diagonal.
        const acc_t weight = d_negative[b * batch + j] + d_negative[j * batch + b];
        omega[j] = weight / (nv * cos.norm_v[j]);
        diagonal += weight * cos.negative[b * batch + j];
      }
      omega[b] = -diagonal / (nv * nv);
      acc_t omega_sum = 0, omega_gram = 0;
      for (int64_t j = 0; j < batch; ++j) {
        omega_sum += omega[j];
        omega[j] /= s.sigma_aug[j];
        omega_gram += omega[j] * yy[j * batch + b];
      }
      k.omega_sum[b] = omega_sum;
      k.omega_gram[b] = omega_gram;
    }
  });
  return k;
}

// grad_orig and grad_aug ([B, h·w], acc_t), each skipped where null; grad_aug arrives holding
// Σ_j (Ω_bj/σ'_j) Z_j.
template <typename acc_t>
void pull_back(const CgcProblem<acc_t>& p, const Statistics<acc_t>& s, const Coefficients<acc_t>& k,
               acc_t* grad_orig, acc_t* grad_aug) {
  const acc_t eps = map_eps<acc_t>();
  const int64_t h = p.h, w = p.w;
  const acc_t* row_sums = p.rows.sums.data();
  const acc_t* col_sums = p.cols.sums.data();
  at::parallel_for(0, p.batch, grain_for(p.sample_work()), [&](int64_t begin, int64_t end) {
    SampleWorkspace<acc_t> ws(p);
    // (R_hᵀA) c (BᵀR_w) = R_hᵀ X R_w
    std::vector<acc_t> back_term(grad_aug != nullptr ? p.pixels() : 0);
    for (int64_t b = begin; b < end; ++b) {
      ws.load_crop(p, b);
      if (grad_orig != nullptr) {
        ws.compute_terms(p, b);
      }
      if (grad_aug != nullptr) {
        sandwich(transposed(ws.rows.cross.data(), h), p.orig_map(b),
                 matrix(ws.cols.cross.data(), w), h, w, ws.scratch.data(), back_term.data());
      }
      const acc_t alpha = k.alpha[b], beta = k.beta[b];
      const acc_t sigma = s.sigma_orig[b], sigma_aug = s.sigma_aug[b];
      // dL/dc = Aᵀ(αv + βu)B/σ − ⟨αv + βu, X⟩/σ²·r_h r_wᵀ.
      const acc_t u_dot_x = alpha * (s.xy[b] / sigma_aug + eps * s.sum_x[b]) +
                            beta * (s.xx[b] / sigma + eps * s.sum_x[b]);
      const acc_t crop_coef = (alpha + beta) * eps / sigma;
      const acc_t frame_coef = -u_dot_x / (sigma * sigma);
      // dL/dc' = R_hᵀ(αu + Σ_j Ω_bj v_j)R_w/σ' − ⟨αu + Σ_j Ω_bj v_j, Y_b⟩/σ'²·r_h r_wᵀ.
      const acc_t v_dot_y = alpha * (s.xy[b] / sigma + eps * s.sum_y[b]) + k.omega_gram[b] +
                            k.omega_sum[b] * eps * s.sum_y[b];
      const acc_t aug_coef =
          eps * (alpha + k.omega_sum[b]) / sigma_aug - v_dot_y / (sigma_aug * sigma_aug);
      if (grad_orig != nullptr) {
        acc_t* d_orig = grad_orig + b * p.pixels();
        for (int64_t r = 0; r < h; ++r) {
          for (int64_t q = 0; q < w; ++q) {
            const int64_t at = r * w + q;
            d_orig[at] =
                (alpha * ws.cross_term[at] / sigma_aug + beta * ws.self_term[at] / sigma) / sigma +
                crop_coef * ws.rows.sums[r] * ws.cols.sums[q] +
                frame_coef * row_sums[r] * col_sums[q];
          }
        }
      }
      if (grad_aug != nullptr) {
        acc_t* d_aug = grad_aug + b * p.pixels();
        for (int64_t r = 0; r < h; ++r) {
          for (int64_t q = 0; q < w; ++q) {
            const int64_t at = r * w + q;
            d_aug[at] = (alpha * back_term[at] / sigma + d_aug[at]) / sigma_aug +
                        aug_coef * row_sums[r] * col_sums[q];
          }
        }
      }
    }
  });
}

// ---- entry points ----------------------------------------------------------------------------

// τ in acc_t: the value of temperature_tensor (a CPU tensor: no synchronisation), else the float.
template <typename acc_t>
acc_t temperature_value(const std::optional<at::Tensor>& temperature_tensor, double temperature) {
  if (!temperature_tensor.has_value()) {
    return static_cast<acc_t>(temperature);
  }
  return temperature_tensor->to(c10::CppTypeToScalarType<acc_t>::value).template item<acc_t>();
}

at::Tensor cgc_loss_fwd_cpu(const at::Tensor& cam_orig, const at::Tensor& cam_aug,
                            const at::Tensor& crops, const at::Tensor& flips,
                            const std::optional<at::Tensor>& temperature_tensor,
                            double temperature, int64_t size) {
  cgc_loss_check_inputs(kFwd, cam_orig, cam_aug, crops, flips, temperature_tensor, temperature,
                        size);
  const auto acc_dtype = accumulation_dtype(cam_orig);
  const int64_t batch = cam_orig.size(0);
  if (batch == 0) {
    return at::zeros({}, cam_orig.options().dtype(acc_dtype));
  }
  const at::Tensor orig = cam_orig.to(acc_dtype).contiguous();
  const at::Tensor aug = cam_aug.to(acc_dtype).contiguous();
  const at::Tensor boxes = crops.to(at::kLong).contiguous();
  const at::Tensor flags = flips.to(at::kBool).contiguous();
  at::Tensor loss = at::empty({}, orig.options());
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kFwd, [&] {
    using acc_t = scalar_t;
    const CgcProblem<acc_t> problem(orig, aug, boxes, flags,
                                    temperature_value<acc_t>(temperature_tensor, temperature), size);
    const Statistics<acc_t> stats = compute_statistics(problem, aug.view({batch, -1}));
    loss.fill_(mean_cross_entropy(problem, compute_cosines(problem, stats)));
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cgc_loss_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& cam_orig, const at::Tensor& cam_aug,
    const at::Tensor& crops, const at::Tensor& flips,
    const std::optional<at::Tensor>& temperature_tensor, double temperature, int64_t size,
    const c10::List<bool>& output_mask) {
  const auto [want_orig, want_aug, want_tau] =
      cgc_loss_check_backward(kBwd, grad, cam_orig, cam_aug, crops, flips, temperature_tensor,
                              temperature, size, output_mask);
  const auto acc_dtype = accumulation_dtype(cam_orig);
  const int64_t batch = cam_orig.size(0);
  at::Tensor grad_orig = at::empty({0}, cam_orig.options());
  at::Tensor grad_aug = at::empty({0}, cam_aug.options());
  at::Tensor tau_acc = want_tau ? at::zeros({}, cam_orig.options().dtype(acc_dtype)) : at::Tensor();
  if (batch == 0 || !(want_orig || want_aug || want_tau)) {
    return {want_orig ? at::zeros_like(cam_orig) : grad_orig,
            want_aug ? at::zeros_like(cam_aug) : grad_aug,
            cgc_loss_temperature_grad(cam_orig, temperature_tensor, tau_acc)};
  }
  const at::Tensor orig = cam_orig.to(acc_dtype).contiguous();
  const at::Tensor aug = cam_aug.to(acc_dtype).contiguous();
  const at::Tensor boxes = crops.to(at::kLong).contiguous();
  const at::Tensor flags = flips.to(at::kBool).contiguous();
  at::Tensor orig_acc = want_orig ? at::empty({batch, orig.size(1) * orig.size(2)}, orig.options())
                                  : at::Tensor();
  at::Tensor aug_acc;
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, kBwd, [&] {
    using acc_t = scalar_t;
    const acc_t upstream = grad.to(acc_dtype).item<acc_t>();
    const CgcProblem<acc_t> problem(orig, aug, boxes, flags,
                                    temperature_value<acc_t>(temperature_tensor, temperature), size);
    const Statistics<acc_t> stats = compute_statistics(problem, aug.view({batch, -1}));
    const Cosines<acc_t> cos = compute_cosines(problem, stats);
    const Coefficients<acc_t> k = compute_coefficients(problem, stats, cos, upstream, orig.options());
    if (want_tau) {
      tau_acc.fill_(k.temperature);
    }
    if (want_aug) {
      aug_acc = at::mm(k.omega_scaled, stats.z);
    }
    if (want_orig || want_aug) {
      pull_back(problem, stats, k, want_orig ? orig_acc.mutable_data_ptr<acc_t>() : nullptr,
                want_aug ? aug_acc.mutable_data_ptr<acc_t>() : nullptr);
    }
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

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("cgc_loss_fwd", &cgc_loss_fwd_cpu);
  m.impl("cgc_loss_bwd", &cgc_loss_bwd_cpu);
}

}  // namespace amc_kernels::cpu
