// AVX2 + FMA row kernels (this file alone is compiled with -mavx2 -mfma; see row_kernels.h).
#include <immintrin.h>

#include "common/avx2_math.h"
#include "norm_rope/row_kernels.h"

namespace pyllm {
namespace norm_rope {

namespace {

inline float exp1(float x) {  // the same approximation for a tail element
  return _mm_cvtss_f32(_mm256_castps256_ps128(exp_avx2(_mm256_set1_ps(x))));
}

double sumsq(const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
    const __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
    a2 = _mm256_fmadd_ps(v2, v2, a2);
    a3 = _mm256_fmadd_ps(v3, v3, a3);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  double ss = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; j < n; ++j) ss += static_cast<double>(x[j]) * x[j];
  return ss;
}

double add_sumsq(const float* a, const float* b, float* s, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    const __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
    _mm256_storeu_ps(s + j, v0);
    _mm256_storeu_ps(s + j + 8, v1);
    acc0 = _mm256_fmadd_ps(v0, v0, acc0);
    acc1 = _mm256_fmadd_ps(v1, v1, acc1);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    _mm256_storeu_ps(s + j, v);
    acc0 = _mm256_fmadd_ps(v, v, acc0);
  }
  double ss = hsum_avx2(_mm256_add_ps(acc0, acc1));
  for (; j < n; ++j) {
    const float v = a[j] + b[j];
    s[j] = v;
    ss += static_cast<double>(v) * v;
  }
  return ss;
}

void scale_mul(const float* x, float scale, const float* w, float* out, int64_t n) {
  const __m256 sc = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), sc), _mm256_loadu_ps(w + j)));
  for (; j < n; ++j) out[j] = x[j] * scale * w[j];
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 g = _mm256_loadu_ps(gate + j);
    const __m256 d = _mm256_add_ps(one, exp_avx2(_mm256_xor_ps(g, sign)));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_div_ps(g, d), _mm256_loadu_ps(up + j)));
  }
  for (; j < n; ++j) out[j] = gate[j] / (1.0f + exp1(-gate[j])) * up[j];
}

}  // namespace

const RowKernels& row_kernels_avx2() {
  static const RowKernels k{"avx2", sumsq, add_sumsq, scale_mul, silu_mul};
  return k;
}

}  // namespace norm_rope
}  // namespace pyllm
