// CPU building blocks of the map kernels (gradcam, class_activation_map, saliency_mask):
// rows read and written in any floating dtype with acc_t arithmetic, vectorised row loops,
// the maps × channel-chunks schedule, and the separable bilinear resize with its transpose.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "amc_kernels/math.h"

namespace amc_kernels::cpu {

// ---- rows in any dtype -------------------------------------------------------------------

// The row src[0, n) as acc_t: src itself when it already is acc_t, else converted into scratch.
template <typename acc_t, typename scalar_t>
const acc_t* read_row(const scalar_t* src, int64_t n, acc_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, scratch, n);
    return scratch;
  }
}

// fill(row) writes n acc_t values; they land in dst, converted through scratch if needed.
template <typename acc_t, typename scalar_t, typename Fill>
void write_row(scalar_t* dst, int64_t n, acc_t* scratch, Fill&& fill) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    fill(dst);
  } else {
    fill(scratch);
    at::vec::convert(scratch, dst, n);
  }
}

// ---- vectorised row loops ----------------------------------------------------------------
// Plain loops under `omp simd`: an extension built without CPU-capability flags gets the
// generic at::vec::Vectorized, whose reductions compile to scalar code; these vectorise.

// y += a·x
template <typename acc_t>
void axpy(acc_t a, const acc_t* x, acc_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    y[i] += a * x[i];
  }
}

// y += x ⊙ z
template <typename acc_t>
void add_product(const acc_t* x, const acc_t* z, acc_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    y[i] += x[i] * z[i];
  }
}

// out = a·x (out may be x)
template <typename acc_t>
void scale_row(acc_t a, const acc_t* x, acc_t* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = a * x[i];
  }
}

// out = x ⊙ z
template <typename acc_t>
void multiply_rows(const acc_t* x, const acc_t* z, acc_t* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = x[i] * z[i];
  }
}

// Σ x ⊙ z, accumulated in SIMD lanes.
template <typename acc_t>
acc_t dot(const acc_t* x, const acc_t* z, int64_t n) {
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    total += x[i] * z[i];
  }
  return total;
}

// Σ x, accumulated in SIMD lanes.
template <typename acc_t>
acc_t sum_row(const acc_t* x, int64_t n) {
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    total += x[i];
  }
  return total;
}

// (min x, max x); (+inf, −inf) for n = 0.
template <typename acc_t>
std::pair<acc_t, acc_t> min_max(const acc_t* x, int64_t n) {
  acc_t lo = std::numeric_limits<acc_t>::infinity();
  acc_t hi = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(min : lo) reduction(max : hi)
  for (int64_t i = 0; i < n; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  return {lo, hi};
}

// ---- schedule: maps × channel chunks -------------------------------------------------------

constexpr int64_t kMinChunkChannels = 16;

// Channel chunks per map: 1 when the maps alone keep every thread busy, otherwise enough
// chunks (of at least kMinChunkChannels channels) to give each thread work.
inline int64_t channel_chunks(int64_t maps, int64_t channels) {
  const int64_t threads = at::get_num_threads();
  if (maps >= threads || maps == 0) {
    return 1;
  }
  const int64_t wanted = (threads + maps - 1) / maps;
  return std::max<int64_t>(1, std::min(wanted, channels / kMinChunkChannels));
}

// step(b, workspace) for every map b, in parallel; make_workspace() gives each task its scratch.
template <typename MakeWorkspace, typename Step>
void for_each_map(int64_t maps, const MakeWorkspace& make_workspace, const Step& step) {
  at::parallel_for(0, maps, 1, [&](int64_t begin, int64_t end) {
    auto workspace = make_workspace();
    for (int64_t b = begin; b < end; ++b) {
      step(b, workspace);
    }
  });
}

// step(b, chunk, k_begin, k_end, workspace) for every channel chunk of every map, in parallel.
template <typename MakeWorkspace, typename Step>
void for_each_chunk(int64_t maps, int64_t channels, int64_t chunks,
                    const MakeWorkspace& make_workspace, const Step& step) {
  at::parallel_for(0, maps * chunks, 1, [&](int64_t begin, int64_t end) {
    auto workspace = make_workspace();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item % chunks;
      step(item / chunks, chunk, chunk * channels / chunks, (chunk + 1) * channels / chunks,
           workspace);
    }
  });
}

// ---- bilinear resize (align_corners=False, torch's upsample_bilinear2d) --------------------

// Per-axis taps of an in_h×in_w → out_h×out_w resize. Forward, separably: each input row is
// resampled along the width (t = v0·w0 + v1·w1), then out = t_i0·w0 + t_i1·w1 along the
// height, torch's evaluation order. transpose() applies the adjoint (the resize's backward).
// A tap whose two sources coincide (past the last pixel, or a one-pixel axis) copies its
// source with weights (1, 0): v·w0 + v·w1 would round off v by an ulp, which min-max
// normalisation of a flat map, or of a plateau of ties, turns into visible differences.
template <typename acc_t>
class BilinearResize {
 public:
  BilinearResize(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w)
      : in_h_(in_h), in_w_(in_w), out_h_(out_h), out_w_(out_w) {
    for (int64_t y = 0; y < out_h; ++y) {
      rows_.push_back(copying_coincident_sources(linear_tap<acc_t>(y, in_h, out_h)));
    }
    for (int64_t x = 0; x < out_w; ++x) {
      cols_.push_back(copying_coincident_sources(linear_tap<acc_t>(x, in_w, out_w)));
    }
  }

  // acc_t elements of scratch that apply() and transpose() need.
  int64_t scratch_size() const { return in_h_ * out_w_; }

  // out[out_h·out_w] = resize(in[in_h·in_w]).
  void apply(const acc_t* in, acc_t* out, acc_t* scratch) const {
    for (int64_t r = 0; r < in_h_; ++r) {
      const acc_t* src = in + r * in_w_;
      acc_t* dst = scratch + r * out_w_;
      for (int64_t x = 0; x < out_w_; ++x) {
        const LinearTap<acc_t>& tap = cols_[x];
        dst[x] = src[tap.i0] * tap.w0 + src[tap.i1] * tap.w1;
      }
    }
    for (int64_t y = 0; y < out_h_; ++y) {
      const LinearTap<acc_t>& tap = rows_[y];
      const acc_t* top = scratch + tap.i0 * out_w_;
      const acc_t* bottom = scratch + tap.i1 * out_w_;
      acc_t* dst = out + y * out_w_;
      for (int64_t x = 0; x < out_w_; ++x) {
        dst[x] = top[x] * tap.w0 + bottom[x] * tap.w1;
      }
    }
  }

  // grad_in[in_h·in_w] = resizeᵀ(grad_out[out_h·out_w]).
  void transpose(const acc_t* grad_out, acc_t* grad_in, acc_t* scratch) const {
    std::fill(scratch, scratch + in_h_ * out_w_, acc_t(0));
    for (int64_t y = 0; y < out_h_; ++y) {
      const LinearTap<acc_t>& tap = rows_[y];
      axpy(tap.w0, grad_out + y * out_w_, scratch + tap.i0 * out_w_, out_w_);
      axpy(tap.w1, grad_out + y * out_w_, scratch + tap.i1 * out_w_, out_w_);
    }
    std::fill(grad_in, grad_in + in_h_ * in_w_, acc_t(0));
    for (int64_t r = 0; r < in_h_; ++r) {
      const acc_t* src = scratch + r * out_w_;
      acc_t* dst = grad_in + r * in_w_;
      for (int64_t x = 0; x < out_w_; ++x) {
        const LinearTap<acc_t>& tap = cols_[x];
        dst[tap.i0] += src[x] * tap.w0;
        dst[tap.i1] += src[x] * tap.w1;
      }
    }
  }

 private:
  static LinearTap<acc_t> copying_coincident_sources(LinearTap<acc_t> tap) {
    if (tap.i0 == tap.i1) {
      tap.w0 = acc_t(1);
      tap.w1 = acc_t(0);
    }
    return tap;
  }

  int64_t in_h_;
  int64_t in_w_;
  int64_t out_h_;
  int64_t out_w_;
  std::vector<LinearTap<acc_t>> rows_;
  std::vector<LinearTap<acc_t>> cols_;
};

}  // namespace amc_kernels::cpu
