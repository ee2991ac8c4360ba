// AVX2 + FMA + F16C inner loop of CPU paged attention (dispatched by cpu_isa()).
#include <immintrin.h>

#include "attention/attention.h"
#include "common/avx2_math.h"

namespace pyllm {
namespace {

inline float bf16_bits_to_float(uint16_t h) {
  return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(h) << 16)));
}

struct Avx2Vec {
  static inline float dot(const float* a, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
      s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
      s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
  }

  static inline void axpy(float alpha, const float* x, float* y, int64_t n) {
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += alpha * x[i];
  }

  static inline void scal(float* y, float s, int64_t n) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(vs, _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] *= s;
  }

  static inline void f16_rows(const uint16_t* src, int64_t stride, float* dst, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, src += stride, dst += n) {
      int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
      for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
    }
  }

  static inline void bf16_rows(const uint16_t* src, int64_t stride, float* dst, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, src += stride, dst += n) {
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
      for (; i < n; ++i) dst[i] = bf16_bits_to_float(src[i]);
    }
  }
};


// The sums of eight vectors, as one vector: lane i = sum of the lanes of a[i].
inline __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline __m256i lane_mask(int64_t k) {  // lanes [0, k) all ones
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// acc[0, 8N) += sum over j in [a, e) of s[j] * v_j[0, 8N), the accumulator kept in registers.
template <int N>
inline void pv_block(const float* s, const float* v, int64_t vstride, int64_t a, int64_t e, float* acc) {
  __m256 r[N];
  for (int i = 0; i < N; ++i) r[i] = _mm256_loadu_ps(acc + 8 * i);
  for (int64_t j = a; j < e; ++j) {
    const __m256 p = _mm256_broadcast_ss(s + j);
    const float* vj = v + j * vstride;
    for (int i = 0; i < N; ++i) r[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * i), r[i]);
  }
  for (int i = 0; i < N; ++i) _mm256_storeu_ps(acc + 8 * i, r[i]);
}

struct Avx2Ops : Avx2Vec {
  static constexpr bool kTiled = false;
  static inline void scores_row(const float* q, const float* krows, int64_t kstride, int64_t a,
                                int64_t e, int64_t d, float* s) {
    const int64_t d8 = d & ~int64_t{7};
    int64_t j = a;
    for (; j + 8 <= e; j += 8) {  // eight keys at once: one reduction for eight dot products
      const float* k = krows + j * kstride;
      __m256 acc[8];
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
      for (int64_t c = 0; c < d8; c += 8) {
        const __m256 qv = _mm256_loadu_ps(q + c);
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + i * kstride + c), acc[i]);
      }
      _mm256_storeu_ps(s + j, hsum8(acc));
      for (int64_t c = d8; c < d; ++c)
        for (int i = 0; i < 8; ++i) s[j + i] += q[c] * k[i * kstride + c];
    }
    for (; j < e; ++j) s[j] = dot(q, krows + j * kstride, d);
  }

  static inline float max_row(const float* s, int64_t a, int64_t e) {
    float m = s[a];
    int64_t j = a;
    if (e - a >= 8) {
      __m256 vm = _mm256_loadu_ps(s + a);
      for (j = a + 8; j + 8 <= e; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      m = _mm_cvtss_f32(h);
    }
    for (; j < e; ++j) m = s[j] > m ? s[j] : m;
    return m;
  }

  static inline float exp_row(float* s, int64_t a, int64_t e, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    int64_t j = a;
    for (; j + 8 <= e; j += 8) {
      const __m256 p = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
      _mm256_storeu_ps(s + j, p);
      sum = _mm256_add_ps(sum, p);
    }
    if (j < e) {
      const __m256i mask = lane_mask(e - j);
      const __m256 p = _mm256_and_ps(exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(s + j, mask), vm)),
                                     _mm256_castsi256_ps(mask));
      _mm256_maskstore_ps(s + j, mask, p);
      sum = _mm256_add_ps(sum, p);
    }
    return hsum_avx2(sum);
  }

  static inline void pv_row(const float* s, const float* vrows, int64_t vstride, int64_t a, int64_t e,
                            int64_t d, float* acc) {
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) pv_block<8>(s, vrows + c, vstride, a, e, acc + c);
    switch ((d - c) / 8) {
      case 7: pv_block<7>(s, vrows + c, vstride, a, e, acc + c); break;
      case 6: pv_block<6>(s, vrows + c, vstride, a, e, acc + c); break;
      case 5: pv_block<5>(s, vrows + c, vstride, a, e, acc + c); break;
      case 4: pv_block<4>(s, vrows + c, vstride, a, e, acc + c); break;
      case 3: pv_block<3>(s, vrows + c, vstride, a, e, acc + c); break;
      case 2: pv_block<2>(s, vrows + c, vstride, a, e, acc + c); break;
      case 1: pv_block<1>(s, vrows + c, vstride, a, e, acc + c); break;
      default: break;
    }
    c += (d - c) / 8 * 8;
    if (c < d)
      for (int64_t j = a; j < e; ++j)
        for (int64_t i = c; i < d; ++i) acc[i] += s[j] * vrows[j * vstride + i];
  }
};

#include "attention/attention_task_impl.h"

}  // namespace

void attention_task_avx2(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  attention_task<Avx2Ops>(sh, task, pos0, sc);
}

}  // namespace pyllm
