// qlinear with AVX2 + FMA + F16C: each 32-weight chunk of a row is decoded in two halves into
// float lanes (nibbles/int8 widened to int32, converted, scaled; fp16 scales through F16C) and
// multiplied into float32 accumulators. A micro-kernel handles R rows x TT tokens at once, so a
// decoded chunk is reused for TT tokens and an activation load for R rows.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <new>

#include "common/avx2_math.h"
#include "common/thread_scratch.h"
#include "quant/qlinear.h"
#include "quant/qlinear_blocks.h"

namespace pyllm {

namespace {

inline __m256 bcast_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_set1_ps(_cvtsh_ss(h));
}

inline __m256i load8_u8(const uint8_t* p) {  // 8 bytes -> 8 x int32 (zero-extended)
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

inline __m256i load8_i8(const uint8_t* p) {  // 8 bytes -> 8 x int32 (sign-extended)
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Chunk decoders. scales(p) reads the chunk's scales; half(p, h, lo, hi) yields the weights
// [8h, 8h+8) in lo and [16+8h, 24+8h) in hi (the pairing a Q4 byte run gives for free).
template <int QT>
struct Dec;

template <>
struct Dec<kQ4_0> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ4_0>;
  static constexpr int64_t kQs = kQuantsAt<BlockQ4_0>;
  __m256 d;
  void scales(const uint8_t* p) { d = bcast_f16(p); }
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    const __m256i v = load8_u8(p + kQs + 8 * h);
    const __m256i eight = _mm256_set1_epi32(8);
    const __m256i l = _mm256_sub_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x0F)), eight);
    const __m256i u = _mm256_sub_epi32(_mm256_srli_epi32(v, 4), eight);
    lo = _mm256_mul_ps(_mm256_cvtepi32_ps(l), d);
    hi = _mm256_mul_ps(_mm256_cvtepi32_ps(u), d);
  }
};

template <>
struct Dec<kQ4_1> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ4_1>;
  static constexpr int64_t kQs = kQuantsAt<BlockQ4_1>;
  __m256 d, m;
  void scales(const uint8_t* p) {
    d = bcast_f16(p);
    m = bcast_f16(p + offsetof(BlockQ4_1, m));
  }
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    // q*d is exact in float32 (4-bit q, 11-bit d), so the FMA rounds q*d + m once, as the
    // reference's q*d then + m does.
    const __m256i v = load8_u8(p + kQs + 8 * h);
    lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0x0F))), d, m);
    hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), d, m);
  }
};

template <>
struct Dec<kQ8_0> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ8_0>;
  static constexpr int64_t kQs = kQuantsAt<BlockQ8_0>;
  __m256 d;
  void scales(const uint8_t* p) { d = bcast_f16(p); }
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    lo = _mm256_mul_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs + 8 * h)), d);
    hi = _mm256_mul_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs + 16 + 8 * h)), d);
  }
};

template <>
struct Dec<kQF16> {
  static constexpr int64_t kBytes = 64;
  void scales(const uint8_t*) {}
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
    hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 + 16 * h)));
  }
};

template <>
struct Dec<kQBF16> {
  static constexpr int64_t kBytes = 64;
  void scales(const uint8_t*) {}
  static __m256 widen(const uint8_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    lo = widen(p + 16 * h);
    hi = widen(p + 32 + 16 * h);
  }
};

template <>
struct Dec<kQF32> {
  static constexpr int64_t kBytes = 128;
  void scales(const uint8_t*) {}
  void half(const uint8_t* p, int h, __m256& lo, __m256& hi) const {
    lo = _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 8 * h);
    hi = _mm256_loadu_ps(reinterpret_cast<const float*>(p) + 16 + 8 * h);
  }
};

constexpr bool is_float_type(int qt) { return qt == kQF32 || qt == kQF16 || qt == kQBF16; }

// out[t0:t0+TT, n0:n0+R] for whole chunks, plus the scalar K tail of float types.
template <int QT, int R, int TT>
void micro(const QLinearArgs& a, int64_t t0, int64_t n0) {
  // With few accumulators, keep lo and hi halves in separate ones: more independent FMA chains.
  constexpr int S = (R * TT <= 4) ? 2 : 1;
  const int64_t chunks = a.K / kQBlock;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a.w + (n0 + r) * a.ldw;
  const float* xs[TT];
  for (int t = 0; t < TT; ++t) xs[t] = a.x + (t0 + t) * a.ldx;

  __m256 acc[S][TT][R];
  for (int s = 0; s < S; ++s)
    for (int t = 0; t < TT; ++t)
      for (int r = 0; r < R; ++r) acc[s][t][r] = _mm256_setzero_ps();

  Dec<QT> dec[R];
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = c * Dec<QT>::kBytes;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) dec[r].scales(rows[r] + off);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256 wlo[R], whi[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) dec[r].half(rows[r] + off, h, wlo[r], whi[r]);
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) {
        const __m256 xlo = _mm256_loadu_ps(xs[t] + c * kQBlock + 8 * h);
        const __m256 xhi = _mm256_loadu_ps(xs[t] + c * kQBlock + 16 + 8 * h);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          acc[0][t][r] = _mm256_fmadd_ps(wlo[r], xlo, acc[0][t][r]);
          acc[S - 1][t][r] = _mm256_fmadd_ps(whi[r], xhi, acc[S - 1][t][r]);
        }
      }
    }
  }

  for (int t = 0; t < TT; ++t) {
    for (int r = 0; r < R; ++r) {
      float s = hsum_avx2(S == 2 ? _mm256_add_ps(acc[0][t][r], acc[S - 1][t][r]) : acc[0][t][r]);
      if constexpr (is_float_type(QT)) {
        for (int64_t k = chunks * kQBlock; k < a.K; ++k) s += float_row_elem(QT, rows[r], k) * xs[t][k];
      }
      if (a.bias) s += a.bias[n0 + r];
      a.out[(t0 + t) * a.ldo + n0 + r] = s;
    }
  }
}

// One token (decode) is memory-bound only if the per-chunk instruction count is small enough,
// and on AVX2 the int->float conversions and FP ports are the limit. So the GEMV kernels work on
// a prepared copy of the activation row (computed once per call, K floats + a little):
//  * Q4 chunks: with b = a code byte (lo + 16*hi) and lo its low nibble, both exact integers,
//      lo*x[j] + hi*x[j+16] = lo*(x[j] - x[j+16]/16) + b*(x[j+16]/16)
//    so two conversions and no shift per 8 bytes; y = x[j] - x[j+16]/16 and z = x[j+16]/16 are
//    prepared per chunk (z exactly, y rounded once).
//  * the chunk's codes are dotted first and scaled once: sum_c d_c * (q_c . x_c), plus
//    m_c * sum(x_c) for Q4_1 (computed as [d, m] . [0, sum(x_c)] in one xmm FMA).
// Q4_0 uses lo - 8 and b - 136 = (lo - 8) + 16*(hi - 8), still exact integers.
// The result differs from the reference only by float32 rounding (tests bound it at ~1e-6).
constexpr int64_t kPrepStride = 36;  // floats per chunk: y[16], z[16], u[4] = [0, sum(x_c), 0, 0]

inline void prepare_q4(const float* x, int64_t chunks, float* out) {
  const __m256 sixteenth = _mm256_set1_ps(1.0f / 16.0f);
  for (int64_t c = 0; c < chunks; ++c) {
    const float* xc = x + c * kQBlock;
    float* o = out + c * kPrepStride;
    __m256 sum = _mm256_setzero_ps();
    for (int h = 0; h < 2; ++h) {
      const __m256 lo = _mm256_loadu_ps(xc + 8 * h), hi = _mm256_loadu_ps(xc + 16 + 8 * h);
      const __m256 z = _mm256_mul_ps(hi, sixteenth);
      _mm256_storeu_ps(o + 8 * h, _mm256_sub_ps(lo, z));
      _mm256_storeu_ps(o + 16 + 8 * h, z);
      sum = _mm256_add_ps(sum, _mm256_add_ps(lo, hi));
    }
    o[32] = 0.f;
    o[33] = hsum_avx2(sum);
    o[34] = o[35] = 0.f;
  }
}

// Per-thread scratch for the prepared activation row (grows to the largest K seen).
struct PrepTag;
inline float* prep_buffer(int64_t floats) { return thread_scratch<float, PrepTag>(static_cast<size_t>(floats), 32); }

template <int QT>
struct GemvChunk;

template <>
struct GemvChunk<kQ4_0> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ4_0>;
  static constexpr bool kPrep = true;
  static void step(const uint8_t* p, const float* xp, __m256& acc, __m128&) {
    const __m256i mask = _mm256_set1_epi32(0x0F), eight = _mm256_set1_epi32(8), k136 = _mm256_set1_epi32(136);
    const __m256i v0 = load8_u8(p + kQuantsAt<BlockQ4_0>), v1 = load8_u8(p + kQuantsAt<BlockQ4_0> + 8);
    __m256 b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v0, mask), eight)), _mm256_loadu_ps(xp));
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v1, mask), eight)), _mm256_loadu_ps(xp + 8), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v0, k136)), _mm256_loadu_ps(xp + 16), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v1, k136)), _mm256_loadu_ps(xp + 24), b);
    acc = _mm256_fmadd_ps(b, bcast_f16(p), acc);
  }
};

template <>
struct GemvChunk<kQ4_1> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ4_1>;
  static constexpr bool kPrep = true;
  static void step(const uint8_t* p, const float* xp, __m256& acc, __m128& macc) {
    const __m256i mask = _mm256_set1_epi32(0x0F);
    const __m256i v0 = load8_u8(p + kQuantsAt<BlockQ4_1>), v1 = load8_u8(p + kQuantsAt<BlockQ4_1> + 8);
    __m256 b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)), _mm256_loadu_ps(xp));
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, mask)), _mm256_loadu_ps(xp + 8), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v0), _mm256_loadu_ps(xp + 16), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v1), _mm256_loadu_ps(xp + 24), b);
    int32_t dm;
    std::memcpy(&dm, p, 4);
    const __m128 dm_f = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));  // [d, m, 0, 0]
    acc = _mm256_fmadd_ps(b, _mm256_broadcastss_ps(dm_f), acc);
    macc = _mm_fmadd_ps(dm_f, _mm_loadu_ps(xp + 32), macc);  // + m * sum(x_c)
  }
};

template <>
struct GemvChunk<kQ8_0> {
  static constexpr int64_t kBytes = kBlockBytes<BlockQ8_0>;
  static constexpr int64_t kQs = kQuantsAt<BlockQ8_0>;
  static constexpr bool kPrep = false;
  static void step(const uint8_t* p, const float* xp, __m256& acc, __m128&) {
    __m256 b = _mm256_mul_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs)), _mm256_loadu_ps(xp));
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs + 8)), _mm256_loadu_ps(xp + 8), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs + 16)), _mm256_loadu_ps(xp + 16), b);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(load8_i8(p + kQs + 24)), _mm256_loadu_ps(xp + 24), b);
    acc = _mm256_fmadd_ps(b, bcast_f16(p), acc);
  }
};

#ifndef PYLLM_QL_PF
#define PYLLM_QL_PF 2
#endif
template <int QT, int R>
void gemv_micro(const QLinearArgs& a, const float* xp, int64_t xstride, int64_t t, int64_t n0) {
  const int64_t chunks = a.K / kQBlock;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a.w + (n0 + r) * a.ldw;
  __m256 acc[R];
  __m128 macc[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    macc[r] = _mm_setzero_ps();
  }
  // Rows are contiguous in memory but walked R at a time, which hides the stream from the
  // hardware prefetcher; ask for the bytes PYLLM_QL_PF row groups ahead explicitly.
  const int64_t ahead = PYLLM_QL_PF * R * a.ldw;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = c * GemvChunk<QT>::kBytes;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(rows[r] + off + ahead), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) GemvChunk<QT>::step(rows[r] + off, xp + c * xstride, acc[r], macc[r]);
  }
  for (int r = 0; r < R; ++r) {
    __m128 m = macc[r];
    m = _mm_add_ss(m, _mm_movehdup_ps(m));  // lanes 0 and 1 hold d*0 and m*sum terms
    float s = hsum_avx2(acc[r]) + _mm_cvtss_f32(m);
    if (a.bias) s += a.bias[n0 + r];
    a.out[t * a.ldo + n0 + r] = s;
  }
}

#ifndef PYLLM_QL_GEMV_R
#define PYLLM_QL_GEMV_R 4
#endif

// One token over rows [n0, n1).
template <int QT>
void gemv_rows(const QLinearArgs& a, int64_t t, int64_t n0, int64_t n1) {
  if constexpr (QT == kQ4_0 || QT == kQ4_1 || QT == kQ8_0) {
    constexpr int R = PYLLM_QL_GEMV_R;
    const int64_t chunks = a.K / kQBlock;
    const float* xp = a.x + t * a.ldx;
    int64_t xstride = kQBlock;
    if constexpr (GemvChunk<QT>::kPrep) {
      float* buf = prep_buffer(chunks * kPrepStride);
      prepare_q4(xp, chunks, buf);
      xp = buf;
      xstride = kPrepStride;
    }
    int64_t n = n0;
    for (; n + R <= n1; n += R) gemv_micro<QT, R>(a, xp, xstride, t, n);
    for (; n < n1; ++n) gemv_micro<QT, 1>(a, xp, xstride, t, n);
  } else {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) micro<QT, 4, 1>(a, t, n);
    for (; n < n1; ++n) micro<QT, 1, 1>(a, t, n);
  }
}

// Rows [n0, n1) for tokens [t0, t0 + TT): R rows at a time, single rows for the remainder.
template <int QT, int R, int TT>
void rows_pass(const QLinearArgs& a, int64_t t0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) micro<QT, R, TT>(a, t0, n);
  for (; n < n1; ++n) micro<QT, 1, TT>(a, t0, n);
}

// Many tokens (prefill, batches): a GEMM. The weight is dequantized one panel at a time (16 rows
// x up to 768 k, 48 KB, in L1/L2) into a k-major buffer, and a 6-token x 16-row micro-kernel
// (12 accumulators; per k: two weight loads, six activation broadcasts, twelve FMAs) runs over
// every token of the range, so each weight is decoded once per 16 rows x 768 k x all tokens.
// (768 k rather than an L1-sized 256: fewer passes adding partial sums into out; measured
// 91-93 against 86 GFLOP/s a core at T=256.)
constexpr int kPanelRows = 16, kPanelK = 768, kMicroTokens = 6;

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Dequantize rows [n, n + rows) (rows <= 16), weights [k0, k0 + klen) into buf[k * ldb + r] (k-major,
// missing rows zero). k0 is a multiple of 32. Eight rows at a time: decode a chunk of each, then
// 8x8 transposes put each k's eight rows side by side.
template <int QT>
void pack_panel(const QLinearArgs& a, int64_t n, int rows, int64_t k0, int64_t klen, float* buf, int64_t ldb) {
  const int64_t whole = klen / kQBlock * kQBlock;
  for (int g = 0; g < kPanelRows; g += 8) {
    const uint8_t* rp[8];
    for (int r = 0; r < 8; ++r) rp[r] = g + r < rows ? a.w + (n + g + r) * a.ldw : nullptr;
    for (int64_t kk = 0; kk < whole; kk += kQBlock) {
      const int64_t off = (k0 + kk) / kQBlock * Dec<QT>::kBytes;
      __m256 lo[8], hi[8], lo2[8], hi2[8];
      for (int r = 0; r < 8; ++r) {
        if (!rp[r]) {
          lo[r] = hi[r] = lo2[r] = hi2[r] = _mm256_setzero_ps();
          continue;
        }
        Dec<QT> dec;
        dec.scales(rp[r] + off);
        dec.half(rp[r] + off, 0, lo[r], hi[r]);    // k [0, 8) and [16, 24)
        dec.half(rp[r] + off, 1, lo2[r], hi2[r]);  // k [8, 16) and [24, 32)
      }
      transpose8(lo);
      transpose8(lo2);
      transpose8(hi);
      transpose8(hi2);
      float* dst = buf + kk * ldb + g;
      for (int i = 0; i < 8; ++i) {
        _mm256_storeu_ps(dst + i * ldb, lo[i]);
        _mm256_storeu_ps(dst + (8 + i) * ldb, lo2[i]);
        _mm256_storeu_ps(dst + (16 + i) * ldb, hi[i]);
        _mm256_storeu_ps(dst + (24 + i) * ldb, hi2[i]);
      }
    }
    for (int64_t k = whole; k < klen; ++k)  // the K tail of a float type
      for (int r = 0; r < 8; ++r) buf[k * ldb + g + r] = rp[r] ? float_row_elem(QT, rp[r], k0 + k) : 0.f;
  }
}

// out_tile[MT][16] = x[t .. t+MT)[k0 .. k0+klen) @ panel
template <int MT>
void panel_micro(const float* x, int64_t ldx, int64_t klen, const float* panel, float* out_tile) {
  __m256 acc[MT][2];
  for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < klen; ++k) {
    const __m256 b0 = _mm256_load_ps(panel + k * kPanelRows);
    const __m256 b1 = _mm256_load_ps(panel + k * kPanelRows + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MT; ++i) {
      const __m256 xa = _mm256_broadcast_ss(x + i * ldx + k);
      acc[i][0] = _mm256_fmadd_ps(xa, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(xa, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    _mm256_storeu_ps(out_tile + i * kPanelRows, acc[i][0]);
    _mm256_storeu_ps(out_tile + i * kPanelRows + 8, acc[i][1]);
  }
}

void gemm_panels(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1, PanelPackFn pack) {
  alignas(32) static thread_local float panel[kPanelK * kPanelRows];
  alignas(32) float tile_out[kMicroTokens * kPanelRows];
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t n = n0; n < n1; ++n) a.out[t * a.ldo + n] = a.bias ? a.bias[n] : 0.f;
  for (int64_t k0 = 0; k0 < a.K; k0 += kPanelK) {
    const int64_t klen = std::min<int64_t>(kPanelK, a.K - k0);
    for (int64_t n = n0; n < n1; n += kPanelRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kPanelRows, n1 - n));
      pack(a, n, rows, k0, klen, panel, kPanelRows);
      for (int64_t t = t0; t < t1; t += kMicroTokens) {
        const int mt = static_cast<int>(std::min<int64_t>(kMicroTokens, t1 - t));
        const float* xp = a.x + t * a.ldx + k0;
        switch (mt) {
          case 6: panel_micro<6>(xp, a.ldx, klen, panel, tile_out); break;
          case 5: panel_micro<5>(xp, a.ldx, klen, panel, tile_out); break;
          case 4: panel_micro<4>(xp, a.ldx, klen, panel, tile_out); break;
          case 3: panel_micro<3>(xp, a.ldx, klen, panel, tile_out); break;
          case 2: panel_micro<2>(xp, a.ldx, klen, panel, tile_out); break;
          default: panel_micro<1>(xp, a.ldx, klen, panel, tile_out); break;
        }
        for (int i = 0; i < mt; ++i) {
          float* o = a.out + (t + i) * a.ldo + n;
          const float* s = tile_out + i * kPanelRows;
          for (int r = 0; r < rows; ++r) o[r] += s[r];
        }
      }
    }
  }
}


// Decode (one token): R rows at a time straight through. Several tokens: a tile of TT tokens'
// activations stays in L1 while every row of a row block (a few hundred KB, so it stays in L2)
// passes over it; weight bytes, 4-8x smaller than the activations they meet, are what is re-read.
#ifndef PYLLM_QL_R
#define PYLLM_QL_R 2
#endif
#ifndef PYLLM_QL_TT
#define PYLLM_QL_TT 4
#endif
template <int QT>
void small_t(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);

template <int QT>
void tile(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (t1 - t0 >= kPackedMinTokens) {
    gemm_panels(a, t0, t1, n0, n1, pack_panel<QT>);
    return;
  }
  small_t<QT>(a, t0, t1, n0, n1);
}

// Fewer than kPackedMinTokens tokens: GEMV per token, or R-row x TT-token register tiles.
template <int QT>
void small_t(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  constexpr int R = PYLLM_QL_R, TT = PYLLM_QL_TT;
  if (t1 - t0 == 1) {
    gemv_rows<QT>(a, t0, n0, n1);
    return;
  }
  // Row blocks small enough to stay in L2 while every token tile passes over them.
  const int64_t row_block = std::max<int64_t>(R, (256 * 1024) / std::max<int64_t>(a.ldw, 1) / R * R);
  for (int64_t nb = n0; nb < n1; nb += row_block) {
    const int64_t ne = std::min(n1, nb + row_block);
    int64_t t = t0;
    for (; t + TT <= t1; t += TT) rows_pass<QT, R, TT>(a, t, nb, ne);
    switch (t1 - t) {  // the last 1-3 tokens share one pass over the rows too
      case 3: rows_pass<QT, 2, 3>(a, t, nb, ne); break;
      case 2: rows_pass<QT, 2, 2>(a, t, nb, ne); break;
      case 1: gemv_rows<QT>(a, t, nb, ne); break;
      default: break;
    }
  }
}

}  // namespace

#define PYLLM_QL_DISPATCH(fn, ...)              \
  switch (a.qtype) {                            \
    case kQ4_0: fn<kQ4_0>(__VA_ARGS__); break;  \
    case kQ4_1: fn<kQ4_1>(__VA_ARGS__); break;  \
    case kQ8_0: fn<kQ8_0>(__VA_ARGS__); break;  \
    case kQF16: fn<kQF16>(__VA_ARGS__); break;  \
    case kQBF16: fn<kQBF16>(__VA_ARGS__); break; \
    default: fn<kQF32>(__VA_ARGS__); break;     \
  }

void qlinear_small_t_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  PYLLM_QL_DISPATCH(small_t, a, t0, t1, n0, n1)
}

void qlinear_gemm_panels_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1,
                              PanelPackFn pack) {
  gemm_panels(a, t0, t1, n0, n1, pack);
}

void qlinear_pack_panel_avx2(const QLinearArgs& a, int64_t n, int rows, int64_t k0, int64_t klen, float* buf,
                             int64_t ldb) {
  PYLLM_QL_DISPATCH(pack_panel, a, n, rows, k0, klen, buf, ldb)
}

void qlinear_tile_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  switch (a.qtype) {
    case kQ4_0: tile<kQ4_0>(a, t0, t1, n0, n1); break;
    case kQ4_1: tile<kQ4_1>(a, t0, t1, n0, n1); break;
    case kQ8_0: tile<kQ8_0>(a, t0, t1, n0, n1); break;
    case kQF16: tile<kQF16>(a, t0, t1, n0, n1); break;
    case kQBF16: tile<kQBF16>(a, t0, t1, n0, n1); break;
    default: tile<kQF32>(a, t0, t1, n0, n1); break;
  }
}

}  // namespace pyllm
