// Varlen paged attention on the GPU (see attention.h for the contract).
//
// One thread block per (query token, KV head, context split): it holds the token's G = Hq / Hkv
// query heads, so every K/V row is read once for the whole GQA group. Keys are walked in chunks
// of kChunk: thread j dots key j with the G query rows (scores to shared memory), one warp per
// head does the online-softmax update (running max m, sum l, rescale factor), then threads over
// (head, dim) accumulate p * V with coalesced reads of V rows. Only positions inside the token's
// causal window (and the block's split) are read, so cache slots beyond a sequence's context,
// NaN or not, never reach the output.
//
// Split-K (flash-decoding): when tokens x KV heads cannot fill the GPU (decode of few sequences),
// the context is cut into splits handled by separate blocks; each writes its (m, l, acc) to a
// workspace and a second kernel merges them. The number of splits depends on shapes only (T,
// Hkv, block_tables' width), so a captured CUDA graph stays valid for its batch-size bucket.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention/attention.h"
#include "common/cuda_kernels.h"

namespace pyllm {

namespace {

constexpr int kChunk = 128;    // keys per chunk = threads per block
constexpr int kMinSplit = 64;  // the fewest keys worth a split of their own (measured on an H100:
                               // 256 left a batch-1 decode at 6 blocks and ~50 us a layer)
constexpr int kMaxSplits = 64;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct Params {
  const int32_t* query_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  float* ws_ml;   // [T, Hq, splits, 2] (m, l) per split, when splits > 1
  float* ws_acc;  // [T, Hq, splits, D]
  int B, Hq, Hkv, D, block_size, max_blocks, sliding_window, splits, split_len;
  float scale;
};

// The keys token row t reads in split `split`: cache positions [lo, hi) of sequence b (empty
// when lo >= hi). Its position is context_len - q_len + its index in the sequence.
struct TokenKeys {
  int b, lo, hi;
};

__device__ __forceinline__ TokenKeys token_keys(const Params& P, int t, int split) {
  // The sequence owning row t (binary search; empty sequences are skipped by taking the last b).
  int lo_b = 0, hi_b = P.B;  // answer in [0, B)
  while (hi_b - lo_b > 1) {
    const int mid = (lo_b + hi_b) >> 1;
    if (P.query_start[mid] <= t) lo_b = mid; else hi_b = mid;
  }
  const int b = lo_b;  // the largest b with query_start[b] <= t, so query_start[b + 1] > t
  const int q_len = P.query_start[b + 1] - P.query_start[b];
  const int pos = P.context_lens[b] - q_len + (t - P.query_start[b]);
  const int lo = P.sliding_window > 0 ? max(0, pos - P.sliding_window + 1) : 0;
  return {b, max(lo, split * P.split_len), min(pos + 1, (split + 1) * P.split_len)};
}

// A split that saw no key leaves (m, l) = (-inf, 0), which the merge skips.
__device__ __forceinline__ void mark_split_empty(const Params& P, long long head0, int G, int split) {
  if (P.splits > 1)
    for (int h = threadIdx.x; h < G; h += blockDim.x) {
      float* ml = P.ws_ml + ((head0 + h) * P.splits + split) * 2;
      ml[0] = -INFINITY;
      ml[1] = 0.0f;
    }
}

// Shared memory: row offsets [kChunk] (int64), q [G, D], acc [G, D], p [G, kChunk], m, l, corr [G].
size_t smem_bytes(int G, int D) {
  return sizeof(long long) * kChunk + sizeof(float) * (2 * static_cast<size_t>(G) * D +
                                                       static_cast<size_t>(G) * kChunk + 3 * G);
}

template <class QT, class CT>
__global__ void __launch_bounds__(kChunk)
paged_attention_kernel(const QT* __restrict__ q, const CT* __restrict__ kc, const CT* __restrict__ vc,
                       QT* __restrict__ out, Params P) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int G = P.Hq / P.Hkv, D = P.D;
  long long* rowoff = reinterpret_cast<long long*>(smem_raw);
  float* q_s = reinterpret_cast<float*>(rowoff + kChunk);
  float* acc = q_s + G * D;
  float* p_s = acc + G * D;
  float* m_s = p_s + G * kChunk;
  float* l_s = m_s + G;
  float* corr_s = l_s + G;

  const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const TokenKeys keys = token_keys(P, t, split);
  const int b = keys.b, k_lo = keys.lo, k_hi = keys.hi;
  const long long head0 = static_cast<long long>(t) * P.Hq + static_cast<long long>(g) * G;
  if (k_lo >= k_hi) {  // this split holds none of the token's keys
    mark_split_empty(P, head0, G, split);
    return;
  }

  for (int i = tid; i < G * D; i += blockDim.x) {
    q_s[i] = to_f(q[head0 * D + i]) * P.scale;
    acc[i] = 0.0f;
  }
  for (int h = tid; h < G; h += blockDim.x) {
    m_s[h] = -INFINITY;
    l_s[h] = 0.0f;
  }
  const int32_t* table = P.block_tables + static_cast<long long>(b) * P.max_blocks;
  const long long head_stride = static_cast<long long>(P.Hkv) * D;
  __syncthreads();

  for (int c0 = k_lo; c0 < k_hi; c0 += kChunk) {
    const int n = min(kChunk, k_hi - c0);
    // Scores: thread j takes key c0 + j.
    if (tid < n) {
      const int j = c0 + tid;
      const long long off = (static_cast<long long>(table[j / P.block_size]) * P.block_size + j % P.block_size) *
                                head_stride + static_cast<long long>(g) * D;
      rowoff[tid] = off;
      const CT* krow = kc + off;
      for (int h = 0; h < G; ++h) {
        const float* qh = q_s + h * D;
        float s = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) s = fmaf(qh[d], to_f(krow[d]), s);
        p_s[h * kChunk + tid] = s;
      }
    }
    __syncthreads();
    // Online softmax update, one warp per head.
    for (int h = warp; h < G; h += nwarps) {
      float* ph = p_s + h * kChunk;
      float mx = -INFINITY;
      for (int j = lane; j < n; j += 32) mx = fmaxf(mx, ph[j]);
      mx = warp_max(mx);
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.0f;
      for (int j = lane; j < n; j += 32) {
        const float pj = __expf(ph[j] - m_new);
        ph[j] = pj;
        sum += pj;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float corr = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
        corr_s[h] = corr;
        l_s[h] = l_s[h] * corr + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();
    // acc[h, d] = acc[h, d] * corr[h] + sum_j p[h, j] * v_j[d].
    for (int i = tid; i < G * D; i += blockDim.x) {
      const int h = i / D, d = i - h * D;
      const float* ph = p_s + h * kChunk;
      // Four independent sums: the loads of four keys are in flight at once instead of one
      // dependent chain of n global loads.
      float a0 = acc[i] * corr_s[h], a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      int j = 0;
      for (; j + 4 <= n; j += 4) {
        a0 = fmaf(ph[j], to_f(vc[rowoff[j] + d]), a0);
        a1 = fmaf(ph[j + 1], to_f(vc[rowoff[j + 1] + d]), a1);
        a2 = fmaf(ph[j + 2], to_f(vc[rowoff[j + 2] + d]), a2);
        a3 = fmaf(ph[j + 3], to_f(vc[rowoff[j + 3] + d]), a3);
      }
      for (; j < n; ++j) a0 = fmaf(ph[j], to_f(vc[rowoff[j] + d]), a0);
      acc[i] = (a0 + a1) + (a2 + a3);
    }
    __syncthreads();
  }

  if (P.splits == 1) {
    for (int i = tid; i < G * D; i += blockDim.x) out[head0 * D + i] = from_f<QT>(acc[i] / l_s[i / D]);
  } else {
    for (int i = tid; i < G * D; i += blockDim.x) {
      const int h = i / D, d = i - h * D;
      P.ws_acc[((head0 + h) * P.splits + split) * D + d] = acc[i];
    }
    for (int h = tid; h < G; h += blockDim.x) {
      float* ml = P.ws_ml + ((head0 + h) * P.splits + split) * 2;
      ml[0] = m_s[h];
      ml[1] = l_s[h];
    }
  }
}

// out[t, h] = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M) over the splits that saw keys.
template <class QT>
__global__ void merge_splits_kernel(QT* __restrict__ out, const float* __restrict__ ws_ml,
                                    const float* __restrict__ ws_acc, int Hq, int D, int splits) {
  const long long head = static_cast<long long>(blockIdx.x) * Hq + blockIdx.y;
  const float* ml = ws_ml + head * splits * 2;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0.0f) M = fmaxf(M, ml[2 * s]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0.0f) L += ml[2 * s + 1] * __expf(ml[2 * s] - M);
  const float inv = 1.0f / L;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (ml[2 * s + 1] > 0.0f) a += ws_acc[(head * splits + s) * D + d] * __expf(ml[2 * s] - M);
    out[head * D + d] = from_f<QT>(a * inv);
  }
}

// ------------------------------------------------------------------ the tuned decode kernel
//
// Same grid and split-K contract as paged_attention_kernel (one block per token, KV head and
// split; the same workspace and merge), but nothing is staged in shared memory inside the key
// loop. A key is read by kLanesPerKey = 8 lanes, each holding D/8 of its dims in registers
// through 16-byte loads interleaved across the lanes (load_dims), so each load instruction of a
// key's lanes reads one contiguous 128-byte span of its K or V row, and a warp takes
// kKeyGroups = 4 keys a step (8 for D = 64, unrolled twice to keep more loads in flight). Each
// 8-lane group runs its own online softmax (m, l, acc for the G heads and its D/8 dims) over the
// keys it read: a score costs three shuffles, and nothing else is exchanged until the end, when the
// groups of a warp merge by shuffles and the warps of the block through shared memory.

constexpr int kLanesPerKey = 8;
constexpr int kKeyGroups = 32 / kLanesPerKey;
constexpr int kTunedWarps = 4;

template <class CT>
__device__ __forceinline__ float2 unpack2(uint32_t w);  // two 16-bit values, the lower address first
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t w) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))));
}
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));  // bf16 is float's top half
}

// Elements a 16-byte load holds.
template <class CT>
constexpr int kVec = 16 / static_cast<int>(sizeof(CT));

// A lane's N dims of a row, from p = the row + sub * kVec: vector c (kVec elements) lies at
// p + c * kLanesPerKey * kVec, so the 8 lanes of a key read one contiguous 128-byte span per load
// instruction. Lane `sub` holds dims (i / kVec) * 8 * kVec + sub * kVec + i % kVec (dim_of).
template <class CT, int N>
__device__ __forceinline__ void load_dims(const CT* __restrict__ p, float (&f)[N]) {
  constexpr int V = kVec<CT>;
  static_assert(N % V == 0, "a lane holds whole 16-byte vectors");
#pragma unroll
  for (int c = 0; c < N / V; ++c) {
    const CT* vp = p + c * kLanesPerKey * V;
    if constexpr (std::is_same<CT, float>::value) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(vp));
      f[c * V] = v.x;
      f[c * V + 1] = v.y;
      f[c * V + 2] = v.z;
      f[c * V + 3] = v.w;
    } else {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(vp));
      const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 two = unpack2<CT>(words[j]);
        f[c * V + 2 * j] = two.x;
        f[c * V + 2 * j + 1] = two.y;
      }
    }
  }
}

template <class CT>
__device__ __forceinline__ int dim_of(int sub, int i) {
  constexpr int V = kVec<CT>;
  return (i / V) * kLanesPerKey * V + sub * V + i % V;
}

// D: head dim (64 or 128); MaxG: the most query heads per KV head it holds (G <= MaxG at run time).
template <class CT, int D, int MaxG>
__global__ void __launch_bounds__(32 * kTunedWarps)
warp_split_attention_kernel(const float* __restrict__ q, const CT* __restrict__ kc, const CT* __restrict__ vc,
                            float* __restrict__ out, Params P) {
  constexpr int kDims = D / kLanesPerKey;   // dims a lane holds
  constexpr int kUnroll = D <= 64 ? 2 : 1;  // keys a lane group reads a step
  constexpr int kStep = kTunedWarps * kKeyGroups * kUnroll;  // keys the block reads a step
  __shared__ float red_m[kTunedWarps][MaxG], red_l[kTunedWarps][MaxG];
  __shared__ float red_acc[kTunedWarps][MaxG][D];

  const int G = P.Hq / P.Hkv;
  const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int grp = lane / kLanesPerKey, sub = lane % kLanesPerKey;
  const TokenKeys keys = token_keys(P, t, split);
  const long long head0 = static_cast<long long>(t) * P.Hq + static_cast<long long>(g) * G;
  if (keys.lo >= keys.hi) {  // the same for the whole block
    mark_split_empty(P, head0, G, split);
    return;
  }

  float qr[MaxG][kDims], acc[MaxG][kDims], m[MaxG], l[MaxG];
#pragma unroll
  for (int h = 0; h < MaxG; ++h) {
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
      qr[h][i] = h < G ? q[(head0 + h) * D + dim_of<CT>(sub, i)] * P.scale : 0.0f;
      acc[h][i] = 0.0f;
    }
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  const int32_t* table = P.block_tables + static_cast<long long>(keys.b) * P.max_blocks;
  const long long head_stride = static_cast<long long>(P.Hkv) * D;
  const long long dim0 = static_cast<long long>(g) * D + sub * kVec<CT>;

  // The trip count is the block's, so every lane reaches every shuffle; lanes past the end
  // (valid false) shuffle zeros and skip the update.
  for (int s0 = keys.lo; s0 < keys.hi; s0 += kStep) {
    float kf[kUnroll][kDims], vf[kUnroll][kDims];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = s0 + (warp * kUnroll + u) * kKeyGroups + grp;
      valid[u] = j < keys.hi;
      if (valid[u]) {
        const long long row =
            static_cast<long long>(table[j / P.block_size]) * P.block_size + j % P.block_size;
        load_dims<CT, kDims>(kc + row * head_stride + dim0, kf[u]);
        load_dims<CT, kDims>(vc + row * head_stride + dim0, vf[u]);
      } else {
#pragma unroll
        for (int i = 0; i < kDims; ++i) kf[u][i] = vf[u][i] = 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int h = 0; h < MaxG; ++h) {
        if (h < G) {  // G is the same for every lane
        float sc = 0.0f;
#pragma unroll
        for (int i = 0; i < kDims; ++i) sc = fmaf(qr[h][i], kf[u][i], sc);
#pragma unroll
        for (int o = kLanesPerKey / 2; o > 0; o >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, o);
        if (valid[u]) {
          const float m_new = fmaxf(m[h], sc);
          const float corr = m[h] == -INFINITY ? 0.0f : __expf(m[h] - m_new);
          const float p = __expf(sc - m_new);
          l[h] = fmaf(l[h], corr, p);
#pragma unroll
          for (int i = 0; i < kDims; ++i) acc[h][i] = fmaf(p, vf[u][i], acc[h][i] * corr);
          m[h] = m_new;
        }
        }
      }
    }
  }

  // The four lane groups of the warp: rescale to the warp's max and add (xor 8 and 16 cross groups).
#pragma unroll
  for (int h = 0; h < MaxG; ++h) {
    if (h >= G) continue;
    float mw = m[h];
    mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, 8));
    mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, 16));
    const float f = m[h] == -INFINITY ? 0.0f : __expf(m[h] - mw);
    float lw = l[h] * f;
    lw += __shfl_xor_sync(0xffffffffu, lw, 8);
    lw += __shfl_xor_sync(0xffffffffu, lw, 16);
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
      float a = acc[h][i] * f;
      a += __shfl_xor_sync(0xffffffffu, a, 8);
      a += __shfl_xor_sync(0xffffffffu, a, 16);
      acc[h][i] = a;
    }
    if (grp == 0) {
#pragma unroll
      for (int i = 0; i < kDims; ++i) red_acc[warp][h][dim_of<CT>(sub, i)] = acc[h][i];
      if (sub == 0) {
        red_m[warp][h] = mw;  // -inf, with l = 0 and acc = 0, when the warp read no key
        red_l[warp][h] = lw;
      }
    }
  }
  __syncthreads();

  // The block's warps, in warp order; at least one read a key (keys.lo < keys.hi).
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int h = idx / D, d = idx - h * D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTunedWarps; ++w) M = fmaxf(M, red_m[w][h]);
    float L = 0.0f, A = 0.0f;
#pragma unroll
    for (int w = 0; w < kTunedWarps; ++w) {
      const float f = red_m[w][h] == -INFINITY ? 0.0f : __expf(red_m[w][h] - M);
      L = fmaf(red_l[w][h], f, L);
      A = fmaf(red_acc[w][h][d], f, A);
    }
    if (P.splits == 1) {
      out[head0 * D + idx] = A / L;
    } else {
      P.ws_acc[((head0 + h) * P.splits + split) * D + d] = A;
      if (d == 0) {
        float* ml = P.ws_ml + ((head0 + h) * P.splits + split) * 2;
        ml[0] = M;
        ml[1] = L;
      }
    }
  }
}

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return 1;
  }
  return n;
}

// Blocks of the tuned kernel one SM holds at once for head dim D and G query heads a KV head (its
// float-cache instantiation; the 16-bit ones use as many registers), or 0 when it does not cover
// the shape. Asked of the runtime once per instantiation.
template <int D, int MaxG>
int tuned_residency() {
  static const int blocks = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, warp_split_attention_kernel<float, D, MaxG>,
                                                      32 * kTunedWarps, 0) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return blocks;
}

int tuned_blocks_per_sm(int64_t D, int64_t G) {
  if (D == 64 && G <= 4) return tuned_residency<64, 4>();
  if (D == 64 && G <= 8) return tuned_residency<64, 8>();
  if (D == 128 && G <= 4) return tuned_residency<128, 4>();
  return 0;
}

// Splits per (token, KV head). General kernels: enough blocks for about eight waves of 8 blocks
// an SM. Tuned kernels: at least kTunedWaves waves at the kernel's real residency (4 blocks an SM
// for SmolLM2's shapes, by registers); with several shorter waves, a partly filled last wave of
// equal-length splits idles less of the GPU. At least kMinSplit keys a split either way (a
// block's work is a serial walk over its keys, so short splits run faster than few long ones).
// Depends on shapes and the kernel family only, so the workspace and a graph stay valid.
constexpr int kTunedWaves = 4;

int num_splits(int64_t T, int64_t hq, int64_t hkv, int64_t D, int64_t max_context) {
  const int64_t blocks = T * hkv;
  int64_t target = 8 * static_cast<int64_t>(sm_count());
  if (cuda_kernels() == CudaKernels::Tuned && hkv > 0) {
    const int per_sm = tuned_blocks_per_sm(D, hq / hkv);
    if (per_sm > 0) target = int64_t{kTunedWaves} * per_sm * sm_count();
  }
  if (blocks <= 0 || blocks >= target) return 1;
  int64_t splits = (target + blocks - 1) / blocks;
  const int64_t by_len = (max_context + kMinSplit - 1) / kMinSplit;
  if (splits > by_len) splits = by_len;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return splits < 1 ? 1 : static_cast<int>(splits);
}

// After a split attention kernel (either family): merge the splits' partial results into out.
template <class QT>
void launch_merge(const TensorView& out, const Params& P, int64_t T, cudaStream_t stream) {
  if (P.splits <= 1) return;
  const dim3 mgrid(static_cast<unsigned>(T), static_cast<unsigned>(P.Hq));
  const int threads = P.D >= 128 ? 128 : (P.D >= 64 ? 64 : 32);
  merge_splits_kernel<QT><<<mgrid, threads, 0, stream>>>(out.ptr<QT>(), P.ws_ml, P.ws_acc, P.Hq, P.D, P.splits);
}

template <class QT, class CT>
void launch(const TensorView& q, const TensorView& kc, const TensorView& vc, const TensorView& out,
            const Params& P, int64_t T, cudaStream_t stream) {
  const int G = P.Hq / P.Hkv;
  const size_t smem = smem_bytes(G, P.D);
  auto kernel = paged_attention_kernel<QT, CT>;
  if (smem > 48 * 1024) {
    int dev = 0, limit = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (smem > static_cast<size_t>(limit))
      throw std::invalid_argument("paged_attention on CUDA: " + std::to_string(G) + " query heads per KV head x head dim " +
                                  std::to_string(P.D) + " need " + std::to_string(smem) +
                                  " bytes of shared memory, more than the device's " + std::to_string(limit));
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  }
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(P.Hkv), static_cast<unsigned>(P.splits));
  kernel<<<grid, kChunk, smem, stream>>>(q.ptr<const QT>(), kc.ptr<const CT>(), vc.ptr<const CT>(), out.ptr<QT>(), P);
  launch_merge<QT>(out, P, T, stream);
}

template <class CT, int D, int MaxG>
void launch_tuned(const TensorView& q, const TensorView& kc, const TensorView& vc, const TensorView& out,
                  const Params& P, int64_t T, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(P.Hkv), static_cast<unsigned>(P.splits));
  warp_split_attention_kernel<CT, D, MaxG><<<grid, 32 * kTunedWarps, 0, stream>>>(
      q.ptr<const float>(), kc.ptr<const CT>(), vc.ptr<const CT>(), out.ptr<float>(), P);
  launch_merge<float>(out, P, T, stream);
}

// The tuned kernel, when the setting asks for it and it covers the shapes (float32 queries, head
// dim 64 with up to 8 query heads a KV head or 128 with up to 4, 16-byte aligned caches);
// false leaves the call to the general kernel.
template <class CT>
bool try_tuned(const TensorView& q, const TensorView& kc, const TensorView& vc, const TensorView& out,
               const Params& P, int64_t T, cudaStream_t stream) {
  const int G = P.Hq / P.Hkv;
  if (cuda_kernels() != CudaKernels::Tuned || q.dtype != DType::F32 ||
      reinterpret_cast<uintptr_t>(kc.data) % 16 != 0 || reinterpret_cast<uintptr_t>(vc.data) % 16 != 0)
    return false;
  if (P.D == 64 && G <= 4) {
    launch_tuned<CT, 64, 4>(q, kc, vc, out, P, T, stream);
  } else if (P.D == 64 && G <= 8) {
    launch_tuned<CT, 64, 8>(q, kc, vc, out, P, T, stream);
  } else if (P.D == 128 && G <= 4) {
    launch_tuned<CT, 128, 4>(q, kc, vc, out, P, T, stream);
  } else {
    return false;
  }
  return true;
}

template <class QT>
void launch_cache(const TensorView& q, const TensorView& kc, const TensorView& vc, const TensorView& out,
                  const Params& P, int64_t T, cudaStream_t stream) {
  switch (kc.dtype) {
    case DType::F16:
      if (!try_tuned<__half>(q, kc, vc, out, P, T, stream)) launch<QT, __half>(q, kc, vc, out, P, T, stream);
      break;
    case DType::BF16:
      if (!try_tuned<__nv_bfloat16>(q, kc, vc, out, P, T, stream))
        launch<QT, __nv_bfloat16>(q, kc, vc, out, P, T, stream);
      break;
    default:
      if (!try_tuned<float>(q, kc, vc, out, P, T, stream)) launch<QT, float>(q, kc, vc, out, P, T, stream);
  }
}

}  // namespace

int64_t paged_attention_cuda_workspace(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t max_context) {
  const int splits = num_splits(T, Hq, Hkv, D, max_context);
  return splits == 1 ? 0 : T * Hq * splits * (D + 2);
}

void paged_attention_cuda(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                          const TensorView& query_start, const TensorView& context_lens,
                          const TensorView& block_tables, const TensorView& out, float scale,
                          int64_t sliding_window, const TensorView& workspace, uintptr_t stream_handle) {
  require(q.ndim == 3 && k_cache.ndim == 4 && block_tables.ndim == 2 && q.is_contiguous() && out.is_contiguous() &&
              k_cache.is_contiguous() && v_cache.is_contiguous() && block_tables.is_contiguous(),
          "paged_attention_cuda: layout");
  require(query_start.dtype == DType::I32 && context_lens.dtype == DType::I32 && block_tables.dtype == DType::I32 &&
              k_cache.dtype == v_cache.dtype && out.dtype == q.dtype && workspace.dtype == DType::F32,
          "paged_attention_cuda: dtypes");
  const int64_t T = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hkv = k_cache.shape[2];
  require(Hkv > 0 && Hq % Hkv == 0 && k_cache.shape[3] == D && out.numel() == q.numel(), "paged_attention_cuda: shapes");
  const int64_t B = context_lens.shape[0];
  if (T == 0 || B == 0) return;
  const int64_t max_context = block_tables.shape[1] * k_cache.shape[1];
  require(max_context < (int64_t{1} << 31) && T < (int64_t{1} << 31), "paged_attention_cuda: sizes beyond int32");

  Params P;
  P.query_start = query_start.ptr<const int32_t>();
  P.context_lens = context_lens.ptr<const int32_t>();
  P.block_tables = block_tables.ptr<const int32_t>();
  P.B = static_cast<int>(B);
  P.Hq = static_cast<int>(Hq);
  P.Hkv = static_cast<int>(Hkv);
  P.D = static_cast<int>(D);
  P.block_size = static_cast<int>(k_cache.shape[1]);
  P.max_blocks = static_cast<int>(block_tables.shape[1]);
  P.sliding_window = static_cast<int>(sliding_window);
  P.scale = scale;
  P.splits = num_splits(T, Hq, Hkv, D, max_context);
  P.split_len = static_cast<int>((max_context + P.splits - 1) / P.splits);
  if (P.splits > 1) {
    require(workspace.numel() >= T * Hq * P.splits * (D + 2), "paged_attention_cuda: workspace too small");
    P.ws_ml = workspace.ptr<float>();
    P.ws_acc = P.ws_ml + T * Hq * P.splits * 2;
  } else {
    P.ws_ml = nullptr;
    P.ws_acc = nullptr;
  }
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (q.dtype) {
    case DType::F16: launch_cache<__half>(q, k_cache, v_cache, out, P, T, stream); break;
    case DType::BF16: launch_cache<__nv_bfloat16>(q, k_cache, v_cache, out, P, T, stream); break;
    default: launch_cache<float>(q, k_cache, v_cache, out, P, T, stream);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("paged_attention_cuda: ") + cudaGetErrorString(err));
}

}  // namespace pyllm
