// qlinear and dequantize on CUDA for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (the types of
// qlinear_superblock.cpp): a straightforward exact kernel, not a tuned one. Each weight is decoded
// on its own from its block (the same float32 operations as the reference, so the values are
// bit-identical); a block of threads computes one output (token t, row n): its threads stride
// over K, then reduce their partial sums in shared memory.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "quant/qlinear.h"

namespace pyllm {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float sb_half(const uint8_t* p) {
  const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(h));
}

// Sub-block i's 6-bit scale and min from a Q4_K / Q5_K block's 12 packed bytes.
__device__ __forceinline__ void sb_k_scale_min(const uint8_t* s, int i, int* sc, int* mn) {
  if (i < 4) {
    *sc = s[i] & 63;
    *mn = s[i + 4] & 63;
  } else {
    *sc = (s[i + 4] & 0x0F) | ((s[i - 4] >> 6) << 4);
    *mn = (s[i + 4] >> 4) | ((s[i] >> 6) << 4);
  }
}

// Weight k of a row (layouts: common/quant_blocks.h).
__device__ float sb_weight(int qtype, const uint8_t* row, int64_t k) {
  if (qtype == kQ5_0 || qtype == kQ5_1) {
    const int64_t bytes = qtype == kQ5_0 ? kBlockBytes<BlockQ5_0> : kBlockBytes<BlockQ5_1>;
    const uint8_t* b = row + (k / kQK) * bytes;
    const int j = static_cast<int>(k % kQK);
    const int head = qtype == kQ5_0 ? static_cast<int>(offsetof(BlockQ5_0, qh)) : static_cast<int>(offsetof(BlockQ5_1, qh));
    const uint8_t* qh = b + head;
    const uint8_t* qs = qh + 4;
    const int nib = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
    const int q = nib | (((qh[j / 8] >> (j % 8)) & 1) << 4);
    const float d = sb_half(b);
    if (qtype == kQ5_0) return static_cast<float>(q - 16) * d;
    return static_cast<float>(q) * d + sb_half(b + offsetof(BlockQ5_1, m));
  }
  if (qtype == kQ4_K || qtype == kQ5_K) {
    const int64_t bytes = qtype == kQ4_K ? kBlockBytes<BlockQ4_K> : kBlockBytes<BlockQ5_K>;
    const uint8_t* b = row + (k / kQK_K) * bytes;
    const int w = static_cast<int>(k % kQK_K);
    const int i = w / 32, l = w % 32, c = i / 2;
    int sc, mn;
    sb_k_scale_min(b + offsetof(BlockQ4_K, scales), i, &sc, &mn);
    const uint8_t* qs = b + (qtype == kQ4_K ? offsetof(BlockQ4_K, qs) : offsetof(BlockQ5_K, qs));
    int q = (i % 2 == 0) ? (qs[32 * c + l] & 0x0F) : (qs[32 * c + l] >> 4);
    if (qtype == kQ5_K) q |= ((b[offsetof(BlockQ5_K, qh) + l] >> i) & 1) << 4;
    const float scale = sb_half(b) * static_cast<float>(sc);
    const float min = sb_half(b + 2) * static_cast<float>(mn);
    return scale * static_cast<float>(q) - min;
  }
  // Q6_K
  const uint8_t* b = row + (k / kQK_K) * kBlockBytes<BlockQ6_K>;
  const int w = static_cast<int>(k % kQK_K);
  const int h = w / 128, quarter = (w % 128) / 32, l = w % 32;
  const uint8_t lo = b[offsetof(BlockQ6_K, ql) + 64 * h + 32 * (quarter % 2) + l];
  const int nib = quarter < 2 ? (lo & 0x0F) : (lo >> 4);
  const int high = (b[offsetof(BlockQ6_K, qh) + 32 * h + l] >> (2 * quarter)) & 3;
  const int q = nib | (high << 4);
  const float scale =
      sb_half(b + offsetof(BlockQ6_K, d)) * static_cast<float>(static_cast<int8_t>(b[offsetof(BlockQ6_K, scales) + w / 16]));
  return static_cast<float>(q - 32) * scale;
}

__global__ void sb_qlinear_kernel(int qtype, const float* __restrict__ x, const uint8_t* __restrict__ w,
                                  const float* __restrict__ bias, float* __restrict__ out, int64_t T, int64_t K,
                                  int64_t N, int64_t ldw) {
  __shared__ float partial[kThreads];
  const int64_t n = blockIdx.x;
  const uint8_t* row = w + n * ldw;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const float* xr = x + t * K;
    float s = 0.f;
    for (int64_t k = threadIdx.x; k < K; k += kThreads) s += sb_weight(qtype, row, k) * xr[k];
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[t * N + n] = partial[0] + (bias ? bias[n] : 0.f);
    __syncthreads();
  }
}

__global__ void sb_dequantize_kernel(int qtype, const uint8_t* __restrict__ w, float* __restrict__ out, int64_t K,
                                     int64_t N, int64_t ldw) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * K) return;
  const int64_t n = i / K, k = i % K;
  out[i] = sb_weight(qtype, w + n * ldw, k);
}

}  // namespace

void qlinear_superblock_cuda(int qtype, const float* x, const uint8_t* w, const float* bias, float* out, int64_t T,
                             int64_t K, int64_t N, int64_t ldw, uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
  sb_qlinear_kernel<<<grid, kThreads, 0, stream>>>(qtype, x, w, bias, out, T, K, N, ldw);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("qlinear_cuda: ") + cudaGetErrorString(err));
}

void dequantize_superblock_cuda(int qtype, const uint8_t* w, float* out, int64_t K, int64_t N, int64_t ldw,
                                uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t total = N * K;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
  sb_dequantize_kernel<<<blocks, 256, 0, stream>>>(qtype, w, out, K, N, ldw);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("dequantize_cuda: ") + cudaGetErrorString(err));
}

}  // namespace pyllm
