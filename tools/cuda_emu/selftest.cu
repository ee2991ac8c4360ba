// Kernels with the bugs the CUDA emulator must catch, and two without, for its own tests
// (tests/ops/test_cuda_emulated.py). Built only into the emulator's module, never by nvcc.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "selftest.h"

namespace {

// Thread 0 sums the block's values from shared memory; without the barrier it may read slots
// other threads have not written yet.
__global__ void block_sum_kernel(const float* in, float* out, bool with_barrier) {
  __shared__ float vals[64];
  vals[threadIdx.x] = in[threadIdx.x];
  if (with_barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned i = 0; i < blockDim.x; ++i) s += vals[i];
    out[0] = s;
  }
}

// Half of each warp shuffles while the other half waits at __syncthreads: a hang on a GPU.
__global__ void split_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

// Lanes 0..15 read lanes 16..31, which have exited: undefined values.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16);
}

// The two halves of the block wait at different __syncthreads.
__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Votes over lanes whose predicate is lane % 3 == 0, in a block of 40 threads (the second warp
// has 8 lanes): ballot, any and all per thread, as floats.
__global__ void vote_kernel(float* out) {
  const int pred = threadIdx.x % 3 == 0;
  const unsigned ballot = __ballot_sync(0xffffffffu, pred);
  const int any = __any_sync(0xffffffffu, pred), all = __all_sync(0xffffffffu, threadIdx.x < 64);
  out[threadIdx.x] = static_cast<float>(ballot);
  out[64 + threadIdx.x] = static_cast<float>(any + 2 * all);
}

__global__ void __launch_bounds__(64) bounded_kernel(float* out) { out[threadIdx.x] = 2.0f; }

// Each thread reads its neighbour's slot of dynamic shared memory after the barrier.
__global__ void dynamic_shared_kernel(float* out) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = dyn[(threadIdx.x + 1) % blockDim.x];
}

}  // namespace

namespace pyllm {

std::pair<std::vector<float>, std::string> cuda_emulator_selftest(const std::string& name) {
  std::vector<float> in(64), out(256, -1.0f);
  for (int i = 0; i < 64; ++i) in[i] = static_cast<float>(i + 1);
  float* o = out.data();
  if (name == "block_sum") {
    block_sum_kernel<<<1, 64>>>(in.data(), o, true);
  } else if (name == "block_sum_without_barrier") {
    block_sum_kernel<<<1, 64>>>(in.data(), o, false);
  } else if (name == "split_warp") {
    split_warp_kernel<<<1, 64>>>(o);
  } else if (name == "exited_lane") {
    exited_lane_kernel<<<1, 32>>>(o);
  } else if (name == "two_barriers") {
    two_barriers_kernel<<<1, 32>>>(o);
  } else if (name == "vote") {
    vote_kernel<<<1, 40>>>(o);
  } else if (name == "over_launch_bounds") {
    bounded_kernel<<<1, 128>>>(o);
  } else if (name == "grid_y_too_large") {
    bounded_kernel<<<dim3(1, 70000), 32>>>(o);
  } else if (name == "dynamic_shared") {
    dynamic_shared_kernel<<<1, 256, 256 * sizeof(float)>>>(o);
  } else if (name == "dynamic_shared_over_default") {
    dynamic_shared_kernel<<<1, 256, 64 * 1024>>>(o);
  } else if (name == "dynamic_shared_opted_in") {
    cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    dynamic_shared_kernel<<<1, 256, 64 * 1024>>>(o);
  } else {
    throw std::invalid_argument("no emulator self-test named " + name);
  }
  const cudaError_t err = cudaGetLastError();
  return {out, err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err))};
}

}  // namespace pyllm
