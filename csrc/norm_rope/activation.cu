// SiLU*mul and GELU(tanh) on the GPU: grid-stride elementwise loops.
#include "norm_rope/cuda_utils.cuh"
#include "norm_rope/norm_rope.h"

namespace pyllm {

using namespace norm_rope_cuda;

namespace {

__global__ void silu_mul_kernel(const void* x, int xd, void* out, int od, int64_t n, int64_t width) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / width, j = i - r * width;
    const float g = load(x, xd, r * 2 * width + j);
    const float u = load(x, xd, r * 2 * width + width + j);
    store(out, od, i, g / (1.0f + expf(-g)) * u);
  }
}

__global__ void gelu_tanh_kernel(const void* x, int xd, void* out, int od, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float a = load(x, xd, i);
    store(out, od, i, 0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a))));
  }
}

}  // namespace

void silu_mul_cuda(const TensorView& x, const TensorView& out, cudaStream_t stream) {
  const int64_t n = out.numel(), width = out.size(-1);
  if (n == 0) return;
  silu_mul_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x.data, dtype_code(x), out.data, dtype_code(out), n, width);
  check_launch("silu_mul");
}

void gelu_tanh_cuda(const TensorView& x, const TensorView& out, cudaStream_t stream) {
  const int64_t n = out.numel();
  if (n == 0) return;
  gelu_tanh_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x.data, dtype_code(x), out.data, dtype_code(out), n);
  check_launch("gelu_tanh");
}

}  // namespace pyllm
