// Device-side building blocks shared by the CUDA kernels: warp and block reductions (sum, max)
// and the block-wide merge of online log-sum-exp states. Accumulation is in the caller's acc_t.
#pragma once

#include <cuda_runtime.h>

#include "amc_kernels/math.h"

namespace amc_kernels::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

template <typename T>
__device__ __forceinline__ T warp_reduce_max(T value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullMask, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ OnlineLogSumExp<acc_t> warp_reduce_lse(OnlineLogSumExp<acc_t> state) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    state.merge({__shfl_xor_sync(kFullMask, state.max, offset),
                 __shfl_xor_sync(kFullMask, state.sum, offset)});
  }
  return state;
}

// Block-wide reduction through one shared slot per warp; every thread gets the result.
// Requires blockDim.x to be a multiple of 32 and at most 1024. `warp_reduce` reduces within a warp.
template <typename T, typename WarpReduce>
__device__ __forceinline__ T block_reduce(T value, T identity, WarpReduce warp_reduce) {
  __shared__ T partials[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  value = warp_reduce(value);
  __syncthreads();  // the slots may still be read by a previous call
  if (lane == 0) {
    partials[warp] = value;
  }
  __syncthreads();
  value = lane < num_warps ? partials[lane] : identity;
  return warp_reduce(value);
}

template <typename T>
__device__ __forceinline__ T block_reduce_sum(T value) {
  return block_reduce(value, T(0), [](T v) { return warp_reduce_sum(v); });
}

template <typename T>
__device__ __forceinline__ T block_reduce_max(T value) {
  return block_reduce(value, -std::numeric_limits<T>::infinity(),
                      [](T v) { return warp_reduce_max(v); });
}

template <typename acc_t>
__device__ __forceinline__ OnlineLogSumExp<acc_t> block_reduce_lse(OnlineLogSumExp<acc_t> state) {
  __shared__ acc_t maxes[kWarpSize];
  __shared__ acc_t sums[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  state = warp_reduce_lse(state);
  __syncthreads();
  if (lane == 0) {
    maxes[warp] = state.max;
    sums[warp] = state.sum;
  }
  __syncthreads();
  state = lane < num_warps ? OnlineLogSumExp<acc_t>{maxes[lane], sums[lane]}
                           : OnlineLogSumExp<acc_t>::empty();
  return warp_reduce_lse(state);
}

}  // namespace amc_kernels::cuda
