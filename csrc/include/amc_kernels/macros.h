// Qualifiers for scalar math shared by the CPU (.cpp) and CUDA (.cu) kernels: one definition,
// compiled for host and device, so the CPU tests also cover the math the CUDA kernels use.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AMC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AMC_HOST_DEVICE inline
#endif
