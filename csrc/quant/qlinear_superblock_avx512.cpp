// One-token (decode) exact qlinear for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K with AVX-512; steps of more
// tokens go to the AVX2 kernel (qlinear_superblock_avx2.cpp, whose one-token path this mirrors at
// twice the width). 16 code bytes widen to 16 int32 lanes in one instruction, and the fifth bits
// of Q5_0/Q5_1/Q5_K become lane masks (Q5_0's bit-clear lanes take q - 16 in one masked subtract),
// so a 32-weight group costs about half the AVX2 kernel's instructions: decode is memory-bound
// only if this part is cheap. As there, each group's codes are dotted with x first and the sum
// scaled once; offsets meet the activations' per-32 sums.
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "common/thread_scratch.h"
#include "quant/qlinear.h"
#include "quant/superblock_codes_avx2.h"
#include "quant/superblock_scales.h"

namespace pyllm {

namespace {

inline __m512i widen16(const uint8_t* p) {  // 16 bytes -> 16 x int32 (zero-extended)
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m512 f32(__m512i v) { return _mm512_cvtepi32_ps(v); }

template <int QT>
float gemv_row(const uint8_t* row, int64_t blocks, const float* x, const float* sums) {
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_min = _mm256_setzero_ps();
  float offsets = 0.f;
  const __m512i low4 = _mm512_set1_epi32(0x0F), sixteen = _mm512_set1_epi32(16);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = row + b * superblock_bytes(QT);
    if constexpr (QT == kQ5_0 || QT == kQ5_1) {
      const float* xb = x + b * kQK;
      uint32_t qh;
      std::memcpy(&qh, p + (QT == kQ5_0 ? offsetof(BlockQ5_0, qh) : offsetof(BlockQ5_1, qh)), 4);
      const __m512i v = widen16(p + (QT == kQ5_0 ? offsetof(BlockQ5_0, qs) : offsetof(BlockQ5_1, qs)));
      __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_srli_epi32(v, 4);
      const __mmask16 mlo = _cvtu32_mask16(qh & 0xFFFFu), mhi = _cvtu32_mask16(qh >> 16);
      if constexpr (QT == kQ5_0) {  // q - 16 = nibble - 16 where the fifth bit is clear
        lo = _mm512_mask_sub_epi32(lo, _knot_mask16(mlo), lo, sixteen);
        hi = _mm512_mask_sub_epi32(hi, _knot_mask16(mhi), hi, sixteen);
      } else {
        lo = _mm512_mask_add_epi32(lo, mlo, lo, sixteen);
        hi = _mm512_mask_add_epi32(hi, mhi, hi, sixteen);
      }
      const __m512 s = _mm512_fmadd_ps(f32(hi), _mm512_loadu_ps(xb + 16), _mm512_mul_ps(f32(lo), _mm512_loadu_ps(xb)));
      acc = _mm512_fmadd_ps(s, _mm512_set1_ps(sb_load_f16(p)), acc);
      if constexpr (QT == kQ5_1) offsets += sb_load_f16(p + offsetof(BlockQ5_1, m)) * sums[b];
    } else if constexpr (QT == kQ4_K || QT == kQ5_K) {
      const float* xb = x + b * kQK_K;
      float scale[8], min[8];
      k_scales_avx2(p, scale, min);
      const uint8_t* qs = p + (QT == kQ4_K ? offsetof(BlockQ4_K, qs) : offsetof(BlockQ5_K, qs));
      for (int c = 0; c < 4; ++c) {
        __m512i lo[2], hi[2];
        for (int u = 0; u < 2; ++u) {  // weights 16u .. 16u + 15 of sub-blocks 2c and 2c + 1
          const __m512i v = widen16(qs + 32 * c + 16 * u);
          lo[u] = _mm512_and_si512(v, low4);
          hi[u] = _mm512_srli_epi32(v, 4);
          if constexpr (QT == kQ5_K) {
            const __m512i bits = widen16(p + offsetof(BlockQ5_K, qh) + 16 * u);
            lo[u] = _mm512_mask_add_epi32(lo[u], _mm512_test_epi32_mask(bits, _mm512_set1_epi32(1 << (2 * c))), lo[u], sixteen);
            hi[u] = _mm512_mask_add_epi32(hi[u], _mm512_test_epi32_mask(bits, _mm512_set1_epi32(2 << (2 * c))), hi[u], sixteen);
          }
        }
        const float* xc = xb + 64 * c;
        const __m512 dlo = _mm512_fmadd_ps(f32(lo[1]), _mm512_loadu_ps(xc + 16), _mm512_mul_ps(f32(lo[0]), _mm512_loadu_ps(xc)));
        const __m512 dhi =
            _mm512_fmadd_ps(f32(hi[1]), _mm512_loadu_ps(xc + 48), _mm512_mul_ps(f32(hi[0]), _mm512_loadu_ps(xc + 32)));
        acc = _mm512_fmadd_ps(dlo, _mm512_set1_ps(scale[2 * c]), acc);
        acc = _mm512_fmadd_ps(dhi, _mm512_set1_ps(scale[2 * c + 1]), acc);
      }
      acc_min = _mm256_fmadd_ps(_mm256_loadu_ps(min), _mm256_loadu_ps(sums + 8 * b), acc_min);
    } else {
      const float* xb = x + b * kQK_K;
      float scale[16];
      q6_scales_avx2(p, scale);
      for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 4; ++k) {
          const int first = 128 * h + 32 * k;
          const __m256i w = _mm256_sub_epi8(q6k_quarter_codes(p, h, k), _mm256_set1_epi8(32));
          const __m512 w0 = f32(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(w)));
          const __m512 w1 = f32(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(w, 1)));
          acc = _mm512_fmadd_ps(_mm512_mul_ps(w0, _mm512_loadu_ps(xb + first)), _mm512_set1_ps(scale[first / 16]), acc);
          acc = _mm512_fmadd_ps(_mm512_mul_ps(w1, _mm512_loadu_ps(xb + first + 16)), _mm512_set1_ps(scale[first / 16 + 1]),
                                acc);
        }
      }
    }
  }
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(acc_min), _mm256_extractf128_ps(acc_min, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(m) + offsets;
}

struct SumsTag;

template <int QT>
void gemv(const QLinearArgs& a, int64_t t, int64_t n0, int64_t n1) {
  const int64_t blocks = a.K / superblock_weights(QT);
  const float* x = a.x + t * a.ldx;
  const float* sums = nullptr;
  if constexpr (QT == kQ5_1 || QT == kQ4_K || QT == kQ5_K) {
    const int64_t groups = a.K / kQK;
    float* buf = thread_scratch<float, SumsTag>(static_cast<size_t>(groups), 64);
    for (int64_t g = 0; g < groups; ++g)
      buf[g] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x + g * kQK), _mm512_loadu_ps(x + g * kQK + 16)));
    sums = buf;
  }
  for (int64_t n = n0; n < n1; ++n) {
    float s = gemv_row<QT>(a.w + n * a.ldw, blocks, x, sums);
    if (a.bias) s += a.bias[n];
    a.out[t * a.ldo + n] = s;
  }
}

}  // namespace

void qlinear_tile_superblock_avx512(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (t1 - t0 != 1) {
    qlinear_tile_superblock_avx2(a, t0, t1, n0, n1);
    return;
  }
  dispatch_superblock(a.qtype, [&](auto qt) { gemv<decltype(qt)::value>(a, t0, n0, n1); });
}

}  // namespace pyllm
