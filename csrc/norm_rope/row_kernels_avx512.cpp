// AVX-512F row kernels (this file alone is compiled with -mavx512*; see row_kernels.h). Only
// reached when cpu_isa() says the CPU has AVX-512; tails use masked loads and stores.
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "common/avx512_math.h"
#include "norm_rope/row_kernels.h"

namespace pyllm {
namespace norm_rope {

namespace {

inline __mmask16 tail_mask(int64_t left) { return static_cast<__mmask16>((1u << left) - 1u); }

double sumsq(const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 v0 = _mm512_loadu_ps(x + j), v1 = _mm512_loadu_ps(x + j + 16);
    a0 = _mm512_fmadd_ps(v0, v0, a0);
    a1 = _mm512_fmadd_ps(v1, v1, a1);
  }
  for (; j < n; j += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(n - j >= 16 ? 0xffff : tail_mask(n - j), x + j);
    a0 = _mm512_fmadd_ps(v, v, a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

double add_sumsq(const float* a, const float* b, float* s, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? 0xffff : tail_mask(n - j);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, b + j));
    _mm512_mask_storeu_ps(s + j, m, v);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

void scale_mul(const float* x, float scale, const float* w, float* out, int64_t n) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? 0xffff : tail_mask(n - j);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), sc),
                                   _mm512_maskz_loadu_ps(m, w + j));
    _mm512_mask_storeu_ps(out + j, m, v);
  }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? 0xffff : tail_mask(n - j);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + j);
    const __m512 d = _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(_mm512_div_ps(g, d), _mm512_maskz_loadu_ps(m, up + j)));
  }
}

}  // namespace

const RowKernels& row_kernels_avx512() {
  static const RowKernels k{"avx512", sumsq, add_sumsq, scale_mul, silu_mul};
  return k;
}

}  // namespace norm_rope
}  // namespace pyllm
