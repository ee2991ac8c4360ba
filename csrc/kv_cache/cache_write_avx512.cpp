// AVX-512 float32 -> f16 / bf16 rows for the CPU KV-cache write (dispatched by cpu_isa()).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kv_cache/kv_cache.h"

namespace pyllm {
namespace {

inline __mmask16 tail_mask(int64_t k) { return static_cast<__mmask16>((1u << k) - 1u); }

// Round to nearest even on the bit pattern (not VCVTNEPS2BF16, which flushes denormals): add
// 0x7fff plus the lowest kept bit, keep the top 16 bits. A NaN is kept as its top bits with the
// quiet bit set, so a NaN whose payload sits in the low bits stays NaN.
inline __m256i to_bf16(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// IEEE conversion with round to nearest even (what torch's .to(float16) computes); NaN stays NaN.
inline __m256i to_f16(__m512 x) { return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

template <bool kBf16>
void narrow(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(src + i);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), kBf16 ? to_bf16(x) : to_f16(x));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(k, src + i);
    _mm256_mask_storeu_epi16(dst + i, k, kBf16 ? to_bf16(x) : to_f16(x));
  }
}

}  // namespace

void float_to_half_row_avx512(const float* src, uint16_t* dst, int64_t n, int dtype) {
  if (dtype == 2) narrow<true>(src, dst, n);
  else narrow<false>(src, dst, n);
}

}  // namespace pyllm
