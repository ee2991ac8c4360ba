// The int8-activation qlinear (qlinear_int8.h) for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K with AVX2, on
// AVX2 and AVX-512 CPUs. Every 32-weight group of these formats lines up with one 32-value block
// of the quantized activations (a K-quant sub-block of 32, or a Q6_K quarter holding two
// sub-blocks of 16), so each group is one exact integer dot product and one scaling:
//   Q5_0: out += scale_b * d * sum (q_w - 16) q_x
//   Q5_1: out += scale_b * d * sum q_w q_x + m * (scale_b * sum q_x)
//   Q4_K / Q5_K sub-block i: out += scale_b * (d sc_i) * sum q_w q_x - (dmin mn_i) * (scale_b * sum q_x)
//   Q6_K sub-block i (16 weights): out += scale_b * (d sc_i) * sum (q_w - 32) q_x
// i.e. the exactly dequantized weight against x_hat = scale * codes, as qlinear_int8_ref computes
// it. The rows are read straight from the blocks (no panels), so the kernels pay from one token.
//
// vpmaddubsw multiplies unsigned by signed bytes into saturating int16 pairs; centred codes
// (q - 16, q - 32) go in as |w| against the activation codes with w's sign. No pair can
// saturate: |w| <= 32 and |q_x| <= 127 give at most 2 * 32 * 127 = 8128.
#include <immintrin.h>

#include <algorithm>

#include "common/avx2_math.h"
#include "quant/qlinear_int8.h"
#include "quant/superblock_codes_avx2.h"
#include "quant/superblock_scales.h"

namespace pyllm {

namespace {

// Eight int32 partial sums of codes (unsigned bytes) times the 32 activation codes at x.
inline __m256i dot_u8(__m256i codes, const int8_t* x) {
  const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xq), _mm256_set1_epi16(1));
}

// The same for signed weights w (|w| <= 32).
inline __m256i dot_s8(__m256i w, const int8_t* x) {
  const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xq, w)), _mm256_set1_epi16(1));
}

// out[t .. t + MT) for row n.
template <int QT, int MT>
void row_tokens(const QLinearArgs& a, const Int8Acts& q, int64_t t, int64_t n) {
  constexpr bool kSuper = QT == kQ4_K || QT == kQ5_K || QT == kQ6_K;
  constexpr int64_t kGroups = kSuper ? 8 : 1;  // 32-value activation blocks per weight block
  const int64_t blocks = q.blocks / kGroups;
  const uint8_t* row = a.w + n * a.ldw;
  const int8_t* xs[MT];
  const float* xscale[MT];
  const float* xsum[MT];
  for (int i = 0; i < MT; ++i) {
    xs[i] = q.q + (t + i) * q.K;
    xscale[i] = q.scale + (t + i) * q.blocks;
    xsum[i] = q.xsum + (t + i) * q.blocks;
  }
  __m256 acc[MT], acc_off[MT];
  for (int i = 0; i < MT; ++i) acc[i] = acc_off[i] = _mm256_setzero_ps();
  float off[MT] = {};

  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = row + b * superblock_bytes(QT);
    if constexpr (QT == kQ5_0 || QT == kQ5_1) {
      const int hq = QT == kQ5_0 ? offsetof(BlockQ5_0, qh) : offsetof(BlockQ5_1, qh);
      const int hs = QT == kQ5_0 ? offsetof(BlockQ5_0, qs) : offsetof(BlockQ5_1, qs);
      const __m256i codes = q5_block_codes(p + hq, p + hs);
      const float d = sb_load_f16(p);
      for (int i = 0; i < MT; ++i) {
        const __m256i s = QT == kQ5_0 ? dot_s8(_mm256_sub_epi8(codes, _mm256_set1_epi8(16)), xs[i] + b * kQK)
                                      : dot_u8(codes, xs[i] + b * kQK);
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * xscale[i][b]), acc[i]);
        if constexpr (QT == kQ5_1) off[i] += sb_load_f16(p + offsetof(BlockQ5_1, m)) * xsum[i][b];
      }
    } else if constexpr (QT == kQ4_K || QT == kQ5_K) {
      alignas(32) float scale[8], min[8];
      k_scales_avx2(p, scale, min);
      const __m256 sc = _mm256_load_ps(scale), mn = _mm256_load_ps(min);
      alignas(32) float gs[MT][8];  // d sc_i * scale_b per token and sub-block
      for (int i = 0; i < MT; ++i) {
        _mm256_store_ps(gs[i], _mm256_mul_ps(sc, _mm256_loadu_ps(xscale[i] + 8 * b)));
        acc_off[i] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xsum[i] + 8 * b), acc_off[i]);
      }
      for (int c = 0; c < 4; ++c) {
        __m256i lo, hi;
        if constexpr (QT == kQ4_K) {
          q4k_chunk_codes(p + offsetof(BlockQ4_K, qs), c, lo, hi);
        } else {
          q5k_chunk_codes(p + offsetof(BlockQ5_K, qh), p + offsetof(BlockQ5_K, qs), c, lo, hi);
        }
        for (int i = 0; i < MT; ++i) {
          const int8_t* x = xs[i] + 256 * b + 64 * c;
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8(lo, x)), _mm256_set1_ps(gs[i][2 * c]), acc[i]);
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8(hi, x + 32)), _mm256_set1_ps(gs[i][2 * c + 1]), acc[i]);
        }
      }
    } else {
      float scale[16];
      q6_scales_avx2(p, scale);
      for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 4; ++k) {
          const int group = 4 * h + k;  // the quarter's activation block within the super-block
          const __m256i w = _mm256_sub_epi8(q6k_quarter_codes(p, h, k), _mm256_set1_epi8(32));
          // int32 lanes 0..3 sum the quarter's first 16 weights, lanes 4..7 its last 16.
          const __m256 sc = _mm256_set_m128(_mm_set1_ps(scale[2 * group + 1]), _mm_set1_ps(scale[2 * group]));
          for (int i = 0; i < MT; ++i) {
            const __m256i s = dot_s8(w, xs[i] + 256 * b + 32 * group);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s),
                                     _mm256_mul_ps(sc, _mm256_set1_ps(xscale[i][8 * b + group])), acc[i]);
          }
        }
      }
    }
  }
  for (int i = 0; i < MT; ++i) {
    float s = hsum_avx2(acc[i]) - hsum_avx2(acc_off[i]) + off[i];
    if (a.bias) s += a.bias[n];
    a.out[(t + i) * a.ldo + n] = s;
  }
}

constexpr int kTokens = 4;

template <int QT>
void tile(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  // Token blocks whose activation codes stay in L2 while every row passes over them.
  const int64_t token_block = std::max<int64_t>(kTokens, (256 * 1024) / std::max<int64_t>(q.K, 1) / kTokens * kTokens);
  for (int64_t tb = t0; tb < t1; tb += token_block) {
    const int64_t te = std::min(t1, tb + token_block);
    for (int64_t n = n0; n < n1; ++n) {
      int64_t t = tb;
      for (; t + kTokens <= te; t += kTokens) row_tokens<QT, kTokens>(a, q, t, n);
      switch (te - t) {
        case 3: row_tokens<QT, 3>(a, q, t, n); break;
        case 2: row_tokens<QT, 2>(a, q, t, n); break;
        case 1: row_tokens<QT, 1>(a, q, t, n); break;
        default: break;
      }
    }
  }
}

}  // namespace

void qlinear_int8_tile_superblock_avx2(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                       int64_t n1) {
  dispatch_superblock(a.qtype, [&](auto qt) { tile<decltype(qt)::value>(a, q, t0, t1, n0, n1); });
}

}  // namespace pyllm
