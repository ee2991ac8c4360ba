// Device helpers shared by the small fused ops' CUDA kernels (norm.cu, rope.cu, activation.cu).
// Elements are read and written through the view's dtype code at run time: the branch is the
// same for every thread, and these kernels are memory bound, so one template per op suffices.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/tensor_view.h"

namespace pyllm {
namespace norm_rope_cuda {

__device__ __forceinline__ float load(const void* base, int dtype, int64_t i) {
  switch (dtype) {
    case 1: return __half2float(static_cast<const __half*>(base)[i]);
    case 2: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store(void* base, int dtype, int64_t i, float v) {
  switch (dtype) {
    case 1: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    case 2: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[i] = v;
  }
}

// v rounded to `dtype` and back: what a stored-then-reloaded value reads as.
__device__ __forceinline__ float round_to(int dtype, float v) {
  switch (dtype) {
    case 1: return __half2float(__float2half_rn(v));
    case 2: return __bfloat162float(__float2bfloat16_rn(v));
    default: return v;
  }
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

inline int dtype_code(const TensorView& t) { return static_cast<int>(t.dtype); }

// Threads for a one-block-per-row kernel: a multiple of 32, more for wider rows.
inline int row_threads(int64_t hidden) {
  if (hidden <= 256) return static_cast<int>(((hidden + 31) / 32) * 32);
  return hidden <= 2048 ? 256 : 1024;
}

// Blocks for a grid-stride elementwise kernel of n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(op) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

}  // namespace norm_rope_cuda
}  // namespace pyllm
