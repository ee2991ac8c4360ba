// qlinear on CUDA: out[T, N] = x[T, K] (float32) @ dequant(W[N, K]).T + bias, on the GGUF blocks.
//
// Few tokens (decode, T <= 8): a warp per output row; four lanes share a 32-weight chunk (eight
// weights each), so a warp covers eight chunks a step, dequantizes them in registers and dots them
// with up to 8 activation rows; a warp shuffle reduction finishes the row. Weight bytes are read
// once, coalesced across the warp.
// More tokens: a 64x64 output tile per block; each 32-wide K step loads the activation tile and
// dequantizes the weight tile into shared memory (float32), then every thread accumulates a
// 4x4 micro-tile with float32 FMAs. float32 throughout, so the result matches the reference up
// to the order of additions (no TF32/BF16 tensor-core rounding).
// 9..128 tokens with the tuned kernels chosen (common/cuda_kernels.h): a split-K tile, below.
//
// Block layouts: see qlinear.h / docs/kernels.md. Weight rows must be 4-byte aligned (checked in
// pyllm/ops/qlinear.py, which copies a misaligned view).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda_kernels.h"
#include "quant/qlinear.h"

namespace pyllm {

namespace {

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// Weights [c*32 + 8*part, +8) of a row into w[8]; elements at or past K (float types only) are 0.
template <int QT>
__device__ __forceinline__ void decode8(const uint8_t* row, int64_t c, int part, int64_t K, float w[8]) {
  if constexpr (QT == kQ8_0) {
    const uint8_t* b = row + c * kBlockBytes<BlockQ8_0>;
    const float d = half_bits_to_float(load_u16(b));
    const uint8_t* q = b + kQuantsAt<BlockQ8_0> + 8 * part;
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const uint16_t two = load_u16(q + i);
      w[i] = static_cast<float>(static_cast<int8_t>(two & 0xFF)) * d;
      w[i + 1] = static_cast<float>(static_cast<int8_t>(two >> 8)) * d;
    }
  } else if constexpr (QT == kQ4_0 || QT == kQ4_1) {
    using Block = std::conditional_t<QT == kQ4_0, BlockQ4_0, BlockQ4_1>;
    constexpr int64_t kBytes = kBlockBytes<Block>;
    constexpr int64_t kHead = kQuantsAt<Block>;
    const uint8_t* b = row + c * kBytes;
    const float d = half_bits_to_float(load_u16(b));
    const float m = QT == kQ4_1 ? half_bits_to_float(load_u16(b + offsetof(BlockQ4_1, m))) : 0.f;
    // part 0: low nibbles of bytes 0..7, 1: low of 8..15, 2: high of 0..7, 3: high of 8..15
    const uint8_t* q = b + kHead + 8 * (part & 1);
    const int shift = part < 2 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const uint16_t two = load_u16(q + i);
      const int q0 = ((two & 0xFF) >> shift) & 0x0F, q1 = ((two >> 8) >> shift) & 0x0F;
      if constexpr (QT == kQ4_0) {
        w[i] = static_cast<float>(q0 - 8) * d;
        w[i + 1] = static_cast<float>(q1 - 8) * d;
      } else {
        w[i] = fmaf(static_cast<float>(q0), d, m);  // q*d is exact: one rounding, as q*d + m
        w[i + 1] = fmaf(static_cast<float>(q1), d, m);
      }
    }
  } else {
    const int64_t base = c * 32 + 8 * part;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t k = base + i;
      float v = 0.f;
      if (k < K) {
        if constexpr (QT == kQF16) {
          v = __half2float(reinterpret_cast<const __half*>(row)[k]);
        } else if constexpr (QT == kQBF16) {
          v = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[k]);
        } else {
          v = reinterpret_cast<const float*>(row)[k];
        }
      }
      w[i] = v;
    }
  }
}

// decode8 of row n of the matrix, or zeros for a tile's rows past the last (n >= N).
template <int QT>
__device__ __forceinline__ void decode8_row(const uint8_t* w, int64_t n, int64_t N, int64_t ldw, int64_t c, int part,
                                            int64_t K, float wv[8]) {
  if (n < N) {
    decode8<QT>(w + n * ldw, c, part, K, wv);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) wv[i] = 0.f;
  }
}

// ------------------------------------------------------------------- GEMV

constexpr int kGemvWarps = 4;  // rows per block

// One lane's part of a chunk, its 8 weights wv already decoded: multiply-add them with the
// tokens' activations k0..k0+7. VecX: x rows are 16-byte aligned and K % 32 == 0, so the 8
// activations are two float4 loads; the multiply-adds run in the same order either way
// (bit-identical results).
template <int TT, bool VecX>
__device__ __forceinline__ void gemv_fma(const float (&wv)[8], int64_t k0, int64_t K, const float* __restrict__ x,
                                         int64_t t0, int64_t T, float (&acc)[TT]) {
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t0 + t < T) {
      const float* xp = x + (t0 + t) * K + k0;
      if constexpr (VecX) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(xp));
        const float4 b = __ldg(reinterpret_cast<const float4*>(xp + 4));
        const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[t] = fmaf(wv[i], xv[i], acc[t]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i)
          if (k0 + i < K) acc[t] = fmaf(wv[i], __ldg(xp + i), acc[t]);
      }
    }
  }
}

// kTuned (the tuned family, block types with aligned x): four chunks a step, so a lane's weight
// and activation loads for several chunks are in flight together (the general loop waits for
// each chunk's loads in turn: ~3.7 us a matrix at batch 1 on an H100, mostly that latency).
template <int QT, int TT, bool kTuned>
__global__ void qlinear_gemv_kernel(const float* __restrict__ x, const uint8_t* __restrict__ w,
                                    const float* __restrict__ bias, float* __restrict__ out, int64_t T,
                                    int64_t K, int64_t N, int64_t ldw) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (n >= N) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * TT;
  const uint8_t* row = w + n * ldw;
  const int64_t chunks = (K + 31) / 32;
  const int part = lane & 3;  // four lanes share a chunk, eight weights each: a warp covers 8 chunks
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.f;
  if constexpr (kTuned) {
    // Four of the lane's chunks a step (c, c + 8, c + 16, c + 24: the order of the loop below):
    // all four decoded first, their loads unconditional (past the last chunk the last one is
    // read again and not used), then the multiply-adds of those that exist.
    constexpr int kAhead = 4;
    for (int64_t c0 = lane >> 2; c0 < chunks; c0 += 8 * kAhead) {
      float wv[kAhead][8];
#pragma unroll
      for (int u = 0; u < kAhead; ++u) decode8<QT>(row, min(c0 + 8 * u, chunks - 1), part, K, wv[u]);
#pragma unroll
      for (int u = 0; u < kAhead; ++u)
        if (c0 + 8 * u < chunks) gemv_fma<TT, true>(wv[u], (c0 + 8 * u) * 32 + 8 * part, K, x, t0, T, acc);
    }
  } else {
    for (int64_t c = lane >> 2; c < chunks; c += 8) {
      float wv[8];
      decode8<QT>(row, c, part, K, wv);
      gemv_fma<TT, false>(wv, c * 32 + 8 * part, K, x, t0, T, acc);
    }
  }
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    float s = acc[t];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0 && t0 + t < T) out[(t0 + t) * N + n] = s + (bias ? bias[n] : 0.f);
  }
}

// ------------------------------------------------------------------- GEMM

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kGemmThreads = 256;

template <int QT>
__global__ void __launch_bounds__(kGemmThreads)
qlinear_gemm_kernel(const float* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ out, int64_t T, int64_t K, int64_t N, int64_t ldw) {
  __shared__ float xs[kTileK][kTileM + 4];  // xs[k][m]: token m's activation k
  __shared__ float ws[kTileK][kTileN + 4];  // ws[k][n]: row n's dequantized weight k
  const int tid = threadIdx.x;
  const int tn = tid % 16, tm = tid / 16;  // this thread's 4 rows (tn*4..) and 4 tokens (tm*4..)
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  float acc[4][4] = {};
  const int64_t chunks = (K + kTileK - 1) / kTileK;
  for (int64_t c = 0; c < chunks; ++c) {
    // Activation tile: 64 tokens x 32 k, 8 per thread, consecutive threads on consecutive k.
#pragma unroll
    for (int i = 0; i < (kTileM * kTileK) / kGemmThreads; ++i) {
      const int idx = tid + i * kGemmThreads;
      const int k = idx % kTileK, m = idx / kTileK;
      const int64_t gk = c * kTileK + k, gm = m0 + m;
      xs[k][m] = (gm < T && gk < K) ? x[gm * K + gk] : 0.f;
    }
    // Weight tile: 64 rows x one chunk; 4 threads a row, 8 weights each.
    {
      const int r = tid / 4, part = tid % 4;
      const int64_t gn = n0 + r;
      float wv[8];
      decode8_row<QT>(w, gn, N, ldw, c, part, K, wv);
      // part p holds weights [8p, 8p+8) of the chunk (Q4: the nibble order is resolved in decode8)
#pragma unroll
      for (int i = 0; i < 8; ++i) ws[8 * part + i][r] = wv[i];
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = xs[k][tm * 4 + i];
        b[i] = ws[k][tn * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + tm * 4 + i;
    if (gm >= T) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tn * 4 + j;
      if (gn < N) out[gm * N + gn] = acc[i][j] + (bias ? bias[gn] : 0.f);
    }
  }
}

// ------------------------------------------------------------------- split-K tile (tuned)
//
// For 9..128 tokens (batched decode), when the tuned kernels are chosen (common/cuda_kernels.h).
// The 64x64 tile above leaves a 576-row matrix at 9 blocks a 64-token step on a 132-SM GPU. Here
// a block of kSkWarps warps owns kSkRows output rows x kSkTokens tokens, and warp w takes K chunks
// w, w + kSkWarps, ... (32 weights each): per chunk it dequantizes its rows' weights and loads the
// tokens' activations into its own shared tiles, then each lane accumulates a 4-row x 4-token
// micro-tile. The warps' partial sums are added in warp order at the end, so the result is
// deterministic; float32 throughout, as above (only the order of additions differs from the
// reference).
constexpr int kSkRows = 16, kSkTokens = 32, kSkWarps = 8;
constexpr int kSkWsStride = kSkRows + 4;    // ws[k][row]: +4 keeps float4 rows aligned
constexpr int kSkXsStride = kSkTokens + 4;  // xs[k][token]
constexpr int kSkWarpFloats = 32 * kSkWsStride + 32 * kSkXsStride;
constexpr size_t kSkSmemBytes = sizeof(float) * kSkWarps * kSkWarpFloats;  // 57,344 B: above the 48 KB default
static_assert(kSkWarps * kSkTokens * kSkRows <= kSkWarps * kSkWarpFloats, "the reduction reuses the tiles");

template <int QT>
__global__ void __launch_bounds__(32 * kSkWarps)
qlinear_splitk_kernel(const float* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ bias,
                      float* __restrict__ out, int64_t T, int64_t K, int64_t N, int64_t ldw) {
  extern __shared__ __align__(16) float sk_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* ws = sk_smem + warp * kSkWarpFloats;  // this warp's dequantized chunk: ws[k * kSkWsStride + row]
  float* xs = ws + 32 * kSkWsStride;           // and its activations: xs[k * kSkXsStride + token]
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSkRows;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kSkTokens;
  const int tn = lane & 3, tm = lane >> 2;  // this lane's rows tn*4.. and tokens tm*4..
  float acc[4][4] = {};                      // [token][row]
  const int64_t chunks = (K + 31) / 32;
  for (int64_t c = warp; c < chunks; c += kSkWarps) {
    {  // weights: two lanes a row, two 8-weight parts each
      const int r = lane >> 1;
      const int64_t gn = n0 + r;
#pragma unroll
      for (int pp = 0; pp < 2; ++pp) {
        const int part = 2 * (lane & 1) + pp;
        float wv[8];
        decode8_row<QT>(w, gn, N, ldw, c, part, K, wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) ws[(8 * part + i) * kSkWsStride + r] = wv[i];
      }
    }
    // activations: lane = token, 8 float4 along k (K % 4 == 0 and 16-byte rows: checked by the caller)
    {
      const int64_t gt = t0 + lane;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t gk = c * 32 + 4 * i;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gt < T && gk < K) v = __ldg(reinterpret_cast<const float4*>(x + gt * K + gk));
        xs[(4 * i + 0) * kSkXsStride + lane] = v.x;
        xs[(4 * i + 1) * kSkXsStride + lane] = v.y;
        xs[(4 * i + 2) * kSkXsStride + lane] = v.z;
        xs[(4 * i + 3) * kSkXsStride + lane] = v.w;
      }
    }
    __syncwarp();
#pragma unroll 8
    for (int k = 0; k < 32; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(xs + k * kSkXsStride + tm * 4);
      const float4 b = *reinterpret_cast<const float4*>(ws + k * kSkWsStride + tn * 4);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncwarp();  // the tiles are rewritten by the next chunk
  }
  __syncthreads();  // every warp is done with its tiles: reuse them for the partial sums
  float* red = sk_smem;  // red[(warp * kSkTokens + token) * kSkRows + row]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[(warp * kSkTokens + tm * 4 + i) * kSkRows + tn * 4 + j] = acc[i][j];
  __syncthreads();
  for (int o = threadIdx.x; o < kSkTokens * kSkRows; o += blockDim.x) {
    const int tt = o / kSkRows, r = o % kSkRows;
    const int64_t gt = t0 + tt, gn = n0 + r;
    if (gt >= T || gn >= N) continue;
    float sum = 0.f;
#pragma unroll
    for (int v = 0; v < kSkWarps; ++v) sum += red[(v * kSkTokens + tt) * kSkRows + r];
    out[gt * N + gn] = sum + (bias ? bias[gn] : 0.f);
  }
}

// The split-K tile when the tuned kernels are chosen and it covers the call; false otherwise.
template <int QT>
bool try_splitk(const float* x, const uint8_t* w, const float* bias, float* out, int64_t T, int64_t K, int64_t N,
                int64_t ldw, cudaStream_t stream) {
  if (cuda_kernels() != CudaKernels::Tuned || T <= 8 || T > 128 || K % 4 != 0 ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return false;
  // Per launch: the attribute belongs to the current device (and is allowed during graph capture).
  if (cudaFuncSetAttribute(qlinear_splitk_kernel<QT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSkSmemBytes)) != cudaSuccess) {
    cudaGetLastError();  // a device with less shared memory a block: the general tile
    return false;
  }
  const dim3 grid(static_cast<unsigned>((N + kSkRows - 1) / kSkRows), static_cast<unsigned>((T + kSkTokens - 1) / kSkTokens));
  qlinear_splitk_kernel<QT><<<grid, 32 * kSkWarps, kSkSmemBytes, stream>>>(x, w, bias, out, T, K, N, ldw);
  return true;
}

template <int QT, bool kTuned>
void launch_gemv(const float* x, const uint8_t* w, const float* bias, float* out, int64_t T, int64_t K, int64_t N,
                 int64_t ldw, cudaStream_t stream) {
  const dim3 block(32 * kGemvWarps);
  const dim3 grid(static_cast<unsigned>((N + kGemvWarps - 1) / kGemvWarps), 1);
  if (T == 1) {
    qlinear_gemv_kernel<QT, 1, kTuned><<<grid, block, 0, stream>>>(x, w, bias, out, T, K, N, ldw);
  } else if (T == 2) {
    qlinear_gemv_kernel<QT, 2, kTuned><<<grid, block, 0, stream>>>(x, w, bias, out, T, K, N, ldw);
  } else if (T <= 4) {
    qlinear_gemv_kernel<QT, 4, kTuned><<<grid, block, 0, stream>>>(x, w, bias, out, T, K, N, ldw);
  } else {
    qlinear_gemv_kernel<QT, 8, kTuned><<<grid, block, 0, stream>>>(x, w, bias, out, T, K, N, ldw);
  }
}

template <int QT>
void launch(const float* x, const uint8_t* w, const float* bias, float* out, int64_t T, int64_t K, int64_t N,
            int64_t ldw, cudaStream_t stream) {
  if (T <= 8) {
    constexpr bool kBlocks = QT == kQ4_0 || QT == kQ4_1 || QT == kQ8_0;  // K % 32 == 0
    if (kBlocks && cuda_kernels() == CudaKernels::Tuned && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
      launch_gemv<QT, kBlocks>(x, w, bias, out, T, K, N, ldw, stream);
    } else {
      launch_gemv<QT, false>(x, w, bias, out, T, K, N, ldw, stream);
    }
  } else if (!try_splitk<QT>(x, w, bias, out, T, K, N, ldw, stream)) {
    const dim3 grid(static_cast<unsigned>((N + kTileN - 1) / kTileN), static_cast<unsigned>((T + kTileM - 1) / kTileM));
    qlinear_gemm_kernel<QT><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, T, K, N, ldw);
  }
}

// ------------------------------------------------------------------- dequantize (tuned prefill)

// out[n, k] = the weight decode8 yields: one thread per 8-weight part of a 32-weight chunk.
template <int QT>
__global__ void dequantize_kernel(const uint8_t* __restrict__ w, float* __restrict__ out, int64_t K, int64_t N,
                                  int64_t ldw) {
  const int64_t chunks = (K + 31) / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * chunks * 4) return;
  const int part = static_cast<int>(i & 3);
  const int64_t c = (i >> 2) % chunks, n = (i >> 2) / chunks;
  float wv[8];
  decode8<QT>(w + n * ldw, c, part, K, wv);
  const int64_t k0 = c * 32 + 8 * part;
  float* o = out + n * K + k0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (k0 + j < K) o[j] = wv[j];
}

}  // namespace

void qlinear_cuda(const TensorView& x, const TensorView& w, int qtype, const TensorView* bias, const TensorView& out,
                  uintptr_t stream_handle) {
  require(qlinear_qtype_known(qtype) || qlinear_superblock_qtype(qtype), "qlinear: unknown qtype");
  require(x.ndim == 2 && w.ndim == 2 && out.ndim == 2, "qlinear: x, weight, out must be 2-D");
  require(x.device == Device::CUDA && w.device == Device::CUDA && out.device == Device::CUDA,
          "qlinear_cuda: tensors must be on the GPU");
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  require(out.shape[0] == T && out.shape[1] == N, "qlinear: out shape");
  if (T == 0 || N == 0) return;
  const int64_t ldw = qlinear_row_bytes(qtype, K);
  require(reinterpret_cast<uintptr_t>(w.data) % 4 == 0 && ldw % 2 == 0, "qlinear_cuda: weight alignment");
  const float* b = bias ? bias->ptr<const float>() : nullptr;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const float* xp = x.ptr<const float>();
  const auto* wp = static_cast<const uint8_t*>(w.data);
  float* op = out.ptr<float>();
  if (qlinear_superblock_qtype(qtype)) {
    require(K % superblock_weights(qtype) == 0, "qlinear: K must be a whole number of blocks");
    qlinear_superblock_cuda(qtype, xp, wp, b, op, T, K, N, ldw, stream_handle);
    return;
  }
  switch (qtype) {
    case kQ4_0: launch<kQ4_0>(xp, wp, b, op, T, K, N, ldw, stream); break;
    case kQ4_1: launch<kQ4_1>(xp, wp, b, op, T, K, N, ldw, stream); break;
    case kQ8_0: launch<kQ8_0>(xp, wp, b, op, T, K, N, ldw, stream); break;
    case kQF16: launch<kQF16>(xp, wp, b, op, T, K, N, ldw, stream); break;
    case kQBF16: launch<kQBF16>(xp, wp, b, op, T, K, N, ldw, stream); break;
    default: launch<kQF32>(xp, wp, b, op, T, K, N, ldw, stream); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("qlinear_cuda: ") + cudaGetErrorString(err));
}

void dequantize_cuda(const TensorView& w, int qtype, const TensorView& out, uintptr_t stream_handle) {
  require(qlinear_qtype_known(qtype) || qlinear_superblock_qtype(qtype), "dequantize_cuda: unknown qtype");
  require(w.ndim == 2 && out.ndim == 2 && out.dtype == DType::F32 && out.is_contiguous(), "dequantize_cuda: layout");
  require(w.device == Device::CUDA && out.device == Device::CUDA, "dequantize_cuda: tensors must be on the GPU");
  const int64_t N = out.shape[0], K = out.shape[1];
  require(w.shape[0] == N, "dequantize_cuda: rows");
  if (N == 0 || K == 0) return;
  const int64_t ldw = qlinear_row_bytes(qtype, K);
  const int64_t elem = w.dtype == DType::U8 || w.dtype == DType::I8 ? 1
                       : (w.dtype == DType::F16 || w.dtype == DType::BF16 ? 2 : 4);
  require(w.is_contiguous() && w.shape[1] * elem == ldw, "dequantize_cuda: weight rows must be contiguous row bytes");
  require(reinterpret_cast<uintptr_t>(w.data) % 4 == 0 && ldw % 2 == 0, "dequantize_cuda: weight alignment");
  const auto* wp = static_cast<const uint8_t*>(w.data);
  float* op = out.ptr<float>();
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (qlinear_superblock_qtype(qtype)) {
    require(K % superblock_weights(qtype) == 0, "dequantize_cuda: K must be a whole number of blocks");
    dequantize_superblock_cuda(qtype, wp, op, K, N, ldw, stream_handle);
    return;
  }
  const int64_t parts = N * ((K + 31) / 32) * 4;
  const unsigned blocks = static_cast<unsigned>((parts + 255) / 256);
  switch (qtype) {
    case kQ4_0: dequantize_kernel<kQ4_0><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
    case kQ4_1: dequantize_kernel<kQ4_1><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
    case kQ8_0: dequantize_kernel<kQ8_0><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
    case kQF16: dequantize_kernel<kQF16><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
    case kQBF16: dequantize_kernel<kQBF16><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
    default: dequantize_kernel<kQF32><<<blocks, 256, 0, stream>>>(wp, op, K, N, ldw); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("dequantize_cuda: ") + cudaGetErrorString(err));
}

}  // namespace pyllm
