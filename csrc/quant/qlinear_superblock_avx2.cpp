// The exact (float-activation) qlinear for Q5_0, Q5_1 (blocks of 32) and the K-quants Q4_K, Q5_K,
// Q6_K (super-blocks of 256) with AVX2 + FMA: the codes are unpacked 32 at a time into bytes
// (superblock_codes_avx2.h), widened to float lanes and multiplied with the float32 activations.
//
//  * One token (decode, memory-bound): each 32-weight group's codes are dotted with x first and
//    the sum scaled once (d for Q5_0/Q5_1, d*sc for a K-quant sub-block, two scales for a Q6_K
//    quarter); offsets (Q5_1's m, the K-quants' mins) meet the activations' per-32 sums, made
//    once per call. Q5_0 and Q6_K codes are centred (q - 16, q - 32) as signed bytes first.
//  * 2..9 tokens: each block is decoded into float32 exactly as the reference decodes it (the
//    same single products and roundings as pyllm/weights/quant.py) and reused for every token.
//  * 10 tokens and more: panels of exactly decoded weights through the AVX2 GEMM micro-kernel
//    (qlinear_gemm_panels_avx2 in qlinear_avx2.cpp).
// So the result differs from x @ dequant(W).T only by float32 rounding (the one-token path also
// reassociates each group's sum; tests/ops/test_qlinear_superblock.py bounds it as the other
// kernels' errors are bounded).
#include <immintrin.h>

#include <algorithm>

#include "common/avx2_math.h"
#include "common/thread_scratch.h"
#include "quant/qlinear.h"
#include "quant/superblock_codes_avx2.h"
#include "quant/superblock_scales.h"

namespace pyllm {

namespace {

// The 32 bytes of v as four vectors of 8 floats (bytes read as signed or unsigned integers).
template <bool Signed>
inline void widen(__m256i v, __m256 out[4]) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int i = 0; i < 4; ++i)
    out[i] = _mm256_cvtepi32_ps(Signed ? _mm256_cvtepi8_epi32(part[i]) : _mm256_cvtepu8_epi32(part[i]));
}

// Partial sums of w[0..n*8) * x[0..n*8), 8 lanes.
template <int N>
inline __m256 dot(const __m256* w, const float* x) {
  __m256 s = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
  for (int i = 1; i < N; ++i) s = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x + 8 * i), s);
  return s;
}

// Q4_K / Q5_K chunk c's two sub-blocks of codes.
template <int QT>
inline void k_chunk(const uint8_t* p, int c, __m256i& lo, __m256i& hi) {
  if constexpr (QT == kQ4_K) {
    q4k_chunk_codes(p + offsetof(BlockQ4_K, qs), c, lo, hi);
  } else {
    q5k_chunk_codes(p + offsetof(BlockQ5_K, qh), p + offsetof(BlockQ5_K, qs), c, lo, hi);
  }
}

// ------------------------------------------------------------------ exact block decode

// One block's weights, bit-identical to the reference's dequantization, handed to visit(k, w8)
// eight at a time (k: the first weight's index in the block, w8 its eight float32 values).
template <int QT, typename Visit>
inline void decode_visit(const uint8_t* p, Visit&& visit) {
  __m256 f[4];
  if constexpr (QT == kQ5_0) {
    const __m256 d = _mm256_set1_ps(sb_load_f16(p + offsetof(BlockQ5_0, d)));
    const __m256i q = q5_block_codes(p + offsetof(BlockQ5_0, qh), p + offsetof(BlockQ5_0, qs));
    widen<true>(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f);
    for (int i = 0; i < 4; ++i) visit(8 * i, _mm256_mul_ps(f[i], d));
  } else if constexpr (QT == kQ5_1) {
    const __m256 d = _mm256_set1_ps(sb_load_f16(p + offsetof(BlockQ5_1, d)));
    const __m256 m = _mm256_set1_ps(sb_load_f16(p + offsetof(BlockQ5_1, m)));
    widen<false>(q5_block_codes(p + offsetof(BlockQ5_1, qh), p + offsetof(BlockQ5_1, qs)), f);
    // q*d is exact (5-bit q, 11-bit d): the FMA rounds q*d + m once, as the reference does.
    for (int i = 0; i < 4; ++i) visit(8 * i, _mm256_fmadd_ps(f[i], d, m));
  } else if constexpr (QT == kQ4_K || QT == kQ5_K) {
    float scale[8], min[8];
    k_scales_avx2(p, scale, min);
    for (int c = 0; c < 4; ++c) {
      __m256i codes[2];
      k_chunk<QT>(p, c, codes[0], codes[1]);
      for (int s = 0; s < 2; ++s) {
        const int sub = 2 * c + s;
        const __m256 sc = _mm256_set1_ps(scale[sub]), neg_min = _mm256_set1_ps(-min[sub]);
        widen<false>(codes[s], f);
        // d*sc*q is exact (17-bit d*sc, 5-bit q), so fma(sc, q, -min) is the reference's one rounding.
        for (int i = 0; i < 4; ++i) visit(32 * sub + 8 * i, _mm256_fmadd_ps(f[i], sc, neg_min));
      }
    }
  } else {
    float scale[16];
    q6_scales_avx2(p, scale);
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        const int first = 128 * h + 32 * k;
        widen<true>(_mm256_sub_epi8(q6k_quarter_codes(p, h, k), _mm256_set1_epi8(32)), f);
        for (int i = 0; i < 4; ++i)
          visit(first + 8 * i, _mm256_mul_ps(f[i], _mm256_set1_ps(scale[(first + 8 * i) / 16])));
      }
    }
  }
}

// One block into out[superblock_weights(QT)].
template <int QT>
void decode_exact(const uint8_t* p, float* out) {
  decode_visit<QT>(p, [out](int k, __m256 w8) { _mm256_storeu_ps(out + k, w8); });
}

// ------------------------------------------------------------------ one token

// Per-thread scratch: the activations' per-32 sums (the offsets' and mins' partner).
struct SumsTag;
float* sums_buffer(int64_t n) { return thread_scratch<float, SumsTag>(static_cast<size_t>(n), 32); }

template <int QT>
float gemv_row(const uint8_t* row, int64_t blocks, const float* x, const float* sums) {
  __m256 acc = _mm256_setzero_ps(), acc_min = _mm256_setzero_ps();
  float offsets = 0.f;
  __m256 f[4];
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = row + b * superblock_bytes(QT);
    const float* xb = x + b * superblock_weights(QT);
    if constexpr (QT == kQ5_0) {
      const __m256i q = q5_block_codes(p + offsetof(BlockQ5_0, qh), p + offsetof(BlockQ5_0, qs));
      widen<true>(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f);
      acc = _mm256_fmadd_ps(dot<4>(f, xb), _mm256_set1_ps(sb_load_f16(p)), acc);
    } else if constexpr (QT == kQ5_1) {
      widen<false>(q5_block_codes(p + offsetof(BlockQ5_1, qh), p + offsetof(BlockQ5_1, qs)), f);
      acc = _mm256_fmadd_ps(dot<4>(f, xb), _mm256_set1_ps(sb_load_f16(p)), acc);
      offsets += sb_load_f16(p + offsetof(BlockQ5_1, m)) * sums[b];
    } else if constexpr (QT == kQ4_K || QT == kQ5_K) {
      float scale[8], min[8];
      k_scales_avx2(p, scale, min);
      for (int c = 0; c < 4; ++c) {
        __m256i lo, hi;
        k_chunk<QT>(p, c, lo, hi);
        widen<false>(lo, f);
        acc = _mm256_fmadd_ps(dot<4>(f, xb + 64 * c), _mm256_set1_ps(scale[2 * c]), acc);
        widen<false>(hi, f);
        acc = _mm256_fmadd_ps(dot<4>(f, xb + 64 * c + 32), _mm256_set1_ps(scale[2 * c + 1]), acc);
      }
      acc_min = _mm256_fmadd_ps(_mm256_loadu_ps(min), _mm256_loadu_ps(sums + 8 * b), acc_min);
    } else {
      float scale[16];
      q6_scales_avx2(p, scale);
      for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 4; ++k) {
          const int first = 128 * h + 32 * k;
          widen<true>(_mm256_sub_epi8(q6k_quarter_codes(p, h, k), _mm256_set1_epi8(32)), f);
          acc = _mm256_fmadd_ps(dot<2>(f, xb + first), _mm256_set1_ps(scale[first / 16]), acc);
          acc = _mm256_fmadd_ps(dot<2>(f + 2, xb + first + 16), _mm256_set1_ps(scale[first / 16 + 1]), acc);
        }
      }
    }
  }
  return hsum_avx2(acc) - hsum_avx2(acc_min) + offsets;
}

template <int QT>
void gemv(const QLinearArgs& a, int64_t t, int64_t n0, int64_t n1) {
  const int64_t blocks = a.K / superblock_weights(QT);
  const float* x = a.x + t * a.ldx;
  const float* sums = nullptr;
  if constexpr (QT == kQ5_1 || QT == kQ4_K || QT == kQ5_K) {
    const int64_t groups = a.K / kQK;
    float* buf = sums_buffer(groups);
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + g * kQK;
      const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xg), _mm256_loadu_ps(xg + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(xg + 16), _mm256_loadu_ps(xg + 24)));
      buf[g] = hsum_avx2(s);
    }
    sums = buf;
  }
  for (int64_t n = n0; n < n1; ++n) {
    float s = gemv_row<QT>(a.w + n * a.ldw, blocks, x, sums);
    if (a.bias) s += a.bias[n];
    a.out[t * a.ldo + n] = s;
  }
}

// ------------------------------------------------------------------ a few tokens

constexpr int kTokens = 8;  // tokens a pass over a row (the step has fewer than 10)

// Tokens [t, t + MT) of row n: each decoded group of eight weights meets every token at once,
// in registers (up to 4 tokens, two accumulators a token, alternating, for independent FMA
// chains; more tokens, one each, to stay within the 16 vector registers).
template <int QT, int MT>
void few_tokens_row(const QLinearArgs& a, int64_t t, int64_t n) {
  constexpr int W = superblock_weights(QT);
  constexpr int S = MT <= 4 ? 2 : 1;
  const int64_t blocks = a.K / W;
  const uint8_t* row = a.w + n * a.ldw;
  const float* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = a.x + (t + i) * a.ldx;
  __m256 acc[MT][S];
  for (int i = 0; i < MT; ++i)
    for (int s = 0; s < S; ++s) acc[i][s] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * W;
    decode_visit<QT>(row + b * superblock_bytes(QT), [&](int k, __m256 w8) {
      const int s = S == 2 ? (k >> 3) & 1 : 0;
      for (int i = 0; i < MT; ++i) acc[i][s] = _mm256_fmadd_ps(w8, _mm256_loadu_ps(xs[i] + k0 + k), acc[i][s]);
    });
  }
  for (int i = 0; i < MT; ++i) {
    float s = hsum_avx2(S == 2 ? _mm256_add_ps(acc[i][0], acc[i][S - 1]) : acc[i][0]);
    if (a.bias) s += a.bias[n];
    a.out[(t + i) * a.ldo + n] = s;
  }
}

template <int QT>
void few_tokens(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t t = t0;
    for (; t + kTokens <= t1; t += kTokens) few_tokens_row<QT, kTokens>(a, t, n);
    switch (t1 - t) {
      case 7: few_tokens_row<QT, 7>(a, t, n); break;
      case 6: few_tokens_row<QT, 6>(a, t, n); break;
      case 5: few_tokens_row<QT, 5>(a, t, n); break;
      case 4: few_tokens_row<QT, 4>(a, t, n); break;
      case 3: few_tokens_row<QT, 3>(a, t, n); break;
      case 2: few_tokens_row<QT, 2>(a, t, n); break;
      case 1: few_tokens_row<QT, 1>(a, t, n); break;
      default: break;
    }
  }
}

// ------------------------------------------------------------------ many tokens

// In-register transpose of an 8x8 float block: r[i] holds row i on entry, column i on return.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Rows [n, n + rows) (missing rows zero), weights [k0, k0 + klen) decoded into buf[k * ldb + r].
// The GEMM's panels start at multiples of 768 (three super-blocks), so k0 and klen are whole
// blocks. Eight rows at a time: each row's block is decoded into a row-major scratch, then 8x8
// transposes store eight k's of the eight rows at once.
template <int QT>
void pack_panel(const QLinearArgs& a, int64_t n, int rows, int64_t k0, int64_t klen, float* buf, int64_t ldb) {
  constexpr int W = superblock_weights(QT);
  alignas(32) float w[8][W];
  for (int g = 0; g < static_cast<int>(ldb); g += 8) {
    for (int64_t kb = 0; kb < klen; kb += W) {
      for (int r = 0; r < 8; ++r) {
        if (g + r < rows) {
          decode_exact<QT>(a.w + (n + g + r) * a.ldw + (k0 + kb) / W * superblock_bytes(QT), w[r]);
        } else {
          for (int j = 0; j < W; j += 8) _mm256_store_ps(w[r] + j, _mm256_setzero_ps());
        }
      }
      for (int j = 0; j < W; j += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_load_ps(w[r] + j);
        transpose8x8(v);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(buf + (kb + j + i) * ldb + g, v[i]);
      }
    }
  }
}

template <int QT>
void tile(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (t1 - t0 >= kPackedMinTokens) {
    qlinear_gemm_panels_avx2(a, t0, t1, n0, n1, pack_panel<QT>);
  } else if (t1 - t0 == 1) {
    gemv<QT>(a, t0, n0, n1);
  } else {
    few_tokens<QT>(a, t0, t1, n0, n1);
  }
}

}  // namespace

void qlinear_tile_superblock_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  dispatch_superblock(a.qtype, [&](auto qt) { tile<decltype(qt)::value>(a, t0, t1, n0, n1); });
}

}  // namespace pyllm
