// The codes of the Q5_0/Q5_1/K-quant blocks unpacked into one byte a weight, 32 weights to a
// 256-bit vector (weight j of the group in byte j), with AVX2. Shared by the exact
// (qlinear_superblock_avx2.cpp) and int8-activation (qlinear_int8_superblock_avx2.cpp) kernels;
// included only by files built for AVX2 or above, static inline so each keeps its own copy.
// The layouts are those stated on the block structs in common/quant_blocks.h.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/quant_blocks.h"

namespace pyllm {

static inline __m256i sb_load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Q5_0 / Q5_1: the 32 codes (0..31) of a block. qs byte j holds weights j (low nibble) and j + 16
// (high nibble); bit j of the little-endian u32 at qh is weight j's fifth bit.
static inline __m256i q5_block_codes(const uint8_t* qh, const uint8_t* qs) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i nibbles =
      _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), _mm_and_si128(raw, low4));
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  // Byte j of the vector gets byte j / 8 of the bit word (shuffles stay within 128-bit lanes,
  // and each lane holds the whole broadcast word), then keeps bit j % 8 of it.
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
  return _mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
}

// Q4_K chunk c (weights 64c .. 64c + 63 of a super-block): sub-block 2c's codes in `lo` (low
// nibbles of qs[32c ..]) and sub-block 2c + 1's in `hi` (high nibbles).
static inline void q4k_chunk_codes(const uint8_t* qs, int c, __m256i& lo, __m256i& hi) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i raw = sb_load32(qs + 32 * c);
  lo = _mm256_and_si256(raw, low4);
  hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
}

// Q5_K: as Q4_K, plus bit i of qh[l] as the fifth bit of weight l of sub-block i.
static inline void q5k_chunk_codes(const uint8_t* qh, const uint8_t* qs, int c, __m256i& lo, __m256i& hi) {
  q4k_chunk_codes(qs, c, lo, hi);
  const __m256i bits = sb_load32(qh), one = _mm256_set1_epi8(1);
  const __m128i s0 = _mm_cvtsi32_si128(2 * c), s1 = _mm_cvtsi32_si128(2 * c + 1);
  // Shifting 16-bit lanes moves bits across the byte boundary, but only into bits the mask drops.
  lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(bits, s0), one), 4));
  hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(bits, s1), one), 4));
}

// Q6_K quarter k (0..3) of half h (0..1): the codes (0..63) of weights 128h + 32k .. + 31.
static inline __m256i q6k_quarter_codes(const uint8_t* p, int h, int k) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  const __m256i ql = sb_load32(p + offsetof(BlockQ6_K, ql) + 64 * h + 32 * (k % 2));
  const __m256i qh = sb_load32(p + offsetof(BlockQ6_K, qh) + 32 * h);
  const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(k < 2 ? 0 : 4)), low4);
  const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), two);
  return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

// k_scales (superblock_scales.h) without its per-sub-block loop: the 12 packed bytes read as three
// little-endian words, byte i of each word belonging to sub-block i (or i + 4), so 32-bit masks
// and shifts unpack all eight 6-bit scales and mins at once (shifted-in bits of the neighbouring
// byte are masked off). scale[i] = d * sc_i and min[i] = dmin * mn_i, the same exact products.
static inline void k_scales_avx2(const uint8_t* p, float* scale, float* min) {
  uint32_t s[3];
  std::memcpy(s, p + offsetof(BlockQ4_K, scales), 12);
  const uint32_t sc_lo = s[0] & 0x3F3F3F3Fu, mn_lo = s[1] & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (s[2] & 0x0F0F0F0Fu) | (((s[0] >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((s[2] >> 4) & 0x0F0F0F0Fu) | (((s[1] >> 6) & 0x03030303u) << 4);
  const __m128i v = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), static_cast<int>(mn_lo),
                                   static_cast<int>(mn_hi));
  uint32_t dm;
  std::memcpy(&dm, p, 4);
  const __m128 dmf = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dm)));  // [d, dmin, 0, 0]
  const __m256 d = _mm256_broadcastss_ps(dmf), dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dmf));
  _mm256_storeu_ps(scale, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))));
  _mm256_storeu_ps(min, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)))));
}

// q6_scales (superblock_scales.h) vectorized: the 16 signed scales times d.
static inline void q6_scales_avx2(const uint8_t* p, float* scale) {
  uint16_t h;
  std::memcpy(&h, p + offsetof(BlockQ6_K, d), 2);
  const __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
  const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + offsetof(BlockQ6_K, scales)));
  _mm256_storeu_ps(scale, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
  _mm256_storeu_ps(scale + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
}

}  // namespace pyllm
