// _selfcheck_row_logsumexp on CPU.
// Formula: out[r] = log Σ_c exp(x[r, c]), through amc_kernels::OnlineLogSumExp.
// Mapping: at::parallel_for over rows; one pass per row. Accumulation: acc_type (fp32, fp64 for fp64).
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "amc_kernels/checks.h"
#include "amc_kernels/dispatch.h"
#include "amc_kernels/math.h"

namespace amc_kernels::cpu {
namespace {

constexpr const char* kOp = "_selfcheck_row_logsumexp";

at::Tensor selfcheck_row_logsumexp_cpu(const at::Tensor& x) {
  AMC_CHECK_DIM(x, 2, kOp, "x");
  AMC_CHECK_FLOATING(x, kOp, "x");
  const at::Tensor input = x.contiguous();
  const int64_t rows = input.size(0);
  const int64_t cols = input.size(1);
  const auto out_dtype = accumulation_dtype(input);
  at::Tensor out = at::empty({rows}, input.options().dtype(out_dtype));
  AMC_DISPATCH_FLOATING(input.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* data = input.const_data_ptr<scalar_t>();
    acc_t* result = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        auto state = OnlineLogSumExp<acc_t>::empty();
        for (int64_t c = 0; c < cols; ++c) {
          state.push(static_cast<acc_t>(data[r * cols + c]));
        }
        result[r] = state.value();
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CPU, m) {
  m.impl("_selfcheck_row_logsumexp", &selfcheck_row_logsumexp_cpu);
}

}  // namespace amc_kernels::cpu
