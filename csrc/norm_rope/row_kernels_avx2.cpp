// AVX2 + FMA row kernels (this file alone is compiled with -mavx2 -mfma; see row_kernels.h).
#include <immintrin.h>

#include "norm_rope/row_kernels.h"

namespace pyllm {
namespace norm_rope {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for float lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact),
// e^r by its Taylor series to r^7 (relative error < 1e-8 on that range), times 2^n built in the
// exponent bits. Inputs are clamped to [-87, 88] so 2^n stays a normal float.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float exp1(float x) {  // the same approximation for a tail element
  return _mm_cvtss_f32(_mm256_castps256_ps128(exp8(_mm256_set1_ps(x))));
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
  double ss = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
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
  double ss = hsum(_mm256_add_ps(acc0, acc1));
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
    const __m256 d = _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign)));
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
