// Vector math shared by the AVX-512 kernels. Include ONLY from *_avx512.cpp files; the functions
// are static inline so no copy of them is shared with baseline code.
#pragma once

#include <immintrin.h>

namespace pyllm {

// e^x for 16 float lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact),
// e^r by its Taylor series to r^7 (relative error < 1e-7 on that range), times 2^n by scalef
// (which gives 0 for a very negative n). Inputs are clamped to [-104, 88]: e^-104 is 0 in float,
// e^88 still finite, and an infinite input cannot make r NaN.
static inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace pyllm
