// AVX2 + F16C float32 -> f16 / bf16 rows for the CPU KV-cache write (dispatched by cpu_isa()).
#include <immintrin.h>

#include "common/half.h"
#include "kv_cache/kv_cache.h"

namespace pyllm {
namespace {

// Round to nearest even on the bit pattern, as float_to_bf16 (common/half.h); NaN stays NaN.
inline __m128i to_bf16(__m256 x) {
  const __m256i b = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  // |x| > inf as signed ints (|x| < 2^31, so the signed compare is exact): NaN.
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, quiet, nan);
  // Every lane is below 2^16: pack (per 128-bit half) and gather the two halves' low quadwords.
  const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
  return _mm256_castsi256_si128(p);
}

inline __m128i to_f16(__m256 x) { return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

template <bool kBf16>
void narrow(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), kBf16 ? to_bf16(x) : to_f16(x));
  }
  for (; i < n; ++i) dst[i] = kBf16 ? float_to_bf16(src[i]) : float_to_fp16(src[i]);
}

}  // namespace

void float_to_half_row_avx2(const float* src, uint16_t* dst, int64_t n, int dtype) {
  if (dtype == 2) narrow<true>(src, dst, n);
  else narrow<false>(src, dst, n);
}

}  // namespace pyllm
