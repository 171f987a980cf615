// _selfcheck_row_logsumexp on CUDA: proves that the shared device code (common.cuh) builds and runs.
// Formula: out[r] = log Σ_c exp(x[r, c]).
// Mapping: one block of kThreads threads per row; each thread folds a strided slice into an
// online LSE state, then block_reduce_lse merges them. Accumulation: acc_type (fp32, fp64 for fp64).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "amc_kernels/checks.h"
#include "amc_kernels/dispatch.h"
#include "common.cuh"

namespace amc_kernels::cuda {

int runtime_version() { return CUDART_VERSION; }

namespace {

constexpr const char* kOp = "_selfcheck_row_logsumexp";
constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void row_logsumexp_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ out,
                                     int64_t cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x);
  auto state = OnlineLogSumExp<acc_t>::empty();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    state.push(static_cast<acc_t>(x[row * cols + c]));
  }
  state = block_reduce_lse(state);
  if (threadIdx.x == 0) {
    out[row] = state.value();
  }
}

at::Tensor selfcheck_row_logsumexp_cuda(const at::Tensor& x) {
  AMC_CHECK_DIM(x, 2, kOp, "x");
  AMC_CHECK_FLOATING(x, kOp, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  const int64_t rows = input.size(0);
  const auto out_dtype = accumulation_dtype(input);
  at::Tensor out = at::empty({rows}, input.options().dtype(out_dtype));
  if (rows == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AMC_DISPATCH_FLOATING(input.scalar_type(), kOp, [&] {
    using acc_t = acc_type<scalar_t>;
    row_logsumexp_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(), input.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(amc_kernels, CUDA, m) {
  m.impl("_selfcheck_row_logsumexp", &selfcheck_row_logsumexp_cuda);
}

}  // namespace amc_kernels::cuda
