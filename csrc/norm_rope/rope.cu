// RoPE on the GPU: one block per token, threads over the (Hq + Hk) * D outputs of that token.
// Each output element reads its own input and its pair partner, so there is no shared state.
// Positions were bounds-checked in Python except during CUDA-graph capture; they are clamped
// here as well so a bad position can never read outside cos_sin.
#include "norm_rope/cuda_utils.cuh"
#include "norm_rope/norm_rope.h"

namespace pyllm {

using namespace norm_rope_cuda;

namespace {

__device__ __forceinline__ float rotated(const void* x, int xd, int64_t row, int64_t j, int64_t rotary,
                                         const float* cos, const float* sin, bool neox) {
  const int64_t half = rotary / 2;
  const float v = load(x, xd, row + j);
  if (j >= rotary) return v;
  if (neox) {
    if (j < half) return v * cos[j] - load(x, xd, row + j + half) * sin[j];
    return v * cos[j - half] + load(x, xd, row + j - half) * sin[j - half];
  }
  const int64_t i = j >> 1;
  if ((j & 1) == 0) return v * cos[i] - load(x, xd, row + j + 1) * sin[i];
  return v * cos[i] + load(x, xd, row + j - 1) * sin[i];
}

__global__ void rope_kernel(const void* q, int qd, const void* k, int kd, const int64_t* positions,
                            const float* cos_sin, int64_t max_pos, void* q_out, int qod, void* k_out, int kod,
                            int64_t hq, int64_t hk, int64_t head_dim, int64_t rotary, bool neox) {
  const int64_t t = blockIdx.x;
  int64_t p = positions[t];
  p = p < 0 ? 0 : (p >= max_pos ? max_pos - 1 : p);
  const float* cos = cos_sin + p * rotary;
  const float* sin = cos + rotary / 2;
  const int64_t q_elems = hq * head_dim, total = (hq + hk) * head_dim;
  for (int64_t e = threadIdx.x; e < total; e += blockDim.x) {
    if (e < q_elems) {
      const int64_t row = t * q_elems + (e / head_dim) * head_dim;
      const int64_t j = e % head_dim;
      store(q_out, qod, row + j, rotated(q, qd, row, j, rotary, cos, sin, neox));
    } else {
      const int64_t ek = e - q_elems;
      const int64_t row = t * hk * head_dim + (ek / head_dim) * head_dim;
      const int64_t j = ek % head_dim;
      store(k_out, kod, row + j, rotated(k, kd, row, j, rotary, cos, sin, neox));
    }
  }
}

}  // namespace

void rope_cuda(const TensorView& q, const TensorView& k, const TensorView& positions,
               const TensorView& cos_sin, const TensorView& q_out, const TensorView& k_out, bool neox,
               cudaStream_t stream) {
  const int64_t tokens = q.size(0), hq = q.size(1), hk = k.size(1), head_dim = q.size(2);
  if (tokens == 0) return;
  const int64_t total = (hq + hk) * head_dim;
  const int threads = total >= 512 ? 256 : static_cast<int>(((total + 31) / 32) * 32);
  rope_kernel<<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
      q.data, dtype_code(q), k.data, dtype_code(k), positions.ptr<int64_t>(), cos_sin.ptr<float>(),
      cos_sin.size(0), q_out.data, dtype_code(q_out), k_out.data, dtype_code(k_out), hq, hk, head_dim,
      cos_sin.size(1), neox);
  check_launch("rope");
}

}  // namespace pyllm
