// Lets the host C++ compiler build lstm_kernels.cu for CPU tests (the "execute on CPU" ring).
// With blockIdx = threadIdx = 0 and blockDim = gridDim = 1, each grid-stride kernel processes every
// element in one call. Shared memory becomes a local array and __syncthreads() a no-op, which is
// exact for ONE thread: a kernel with a block-level reduction (softmax_xent) must be written so that
// with blockDim = 1 it computes the same maths (its cross-thread tree is then empty).
#pragma once
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
static inline void __syncthreads() {}

struct gl_host_dim3 { unsigned int x, y, z; };
static const gl_host_dim3 threadIdx = {0, 0, 0};
static const gl_host_dim3 blockIdx = {0, 0, 0};
static const gl_host_dim3 blockDim = {1, 1, 1};
static const gl_host_dim3 gridDim = {1, 1, 1};
