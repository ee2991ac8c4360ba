// AVX-512 inner loop of CPU paged attention. Compiled everywhere, chosen by cpu_isa() only on
// CPUs that have AVX-512 (F/BW/VL); elsewhere it is never called.
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "attention/attention.h"
#include "common/avx512_math.h"

namespace pyllm {
namespace {

inline __mmask16 tail_mask(int64_t k) { return static_cast<__mmask16>((1u << k) - 1u); }

struct Avx512Vec {
  static inline void scal(float* y, float s, int64_t n) {
    const __m512 vs = _mm512_set1_ps(s);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(vs, _mm512_loadu_ps(y + i)));
    if (i < n) {
      const __mmask16 k = tail_mask(n - i);
      _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(k, y + i)));
    }
  }
};

// Cache element tags (the same as attention_task_impl.h's, which is included at the end).
struct Half;
struct BHalf;

// 16 K or V elements as floats: halves are widened in registers (f16 by the F16C-style
// conversion, exact; bf16 is the top half of a float), so no converted copy of a tile is written.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 bf16_widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline __m512 load16(const BHalf* p) { return bf16_widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
// The same for lanes in k (0 elsewhere); masked-off elements are never read.
inline __m512 load16(__mmask16 k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load16(__mmask16 k, const Half* p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
inline __m512 load16(__mmask16 k, const BHalf* p) { return bf16_widen(_mm256_maskz_loadu_epi16(k, p)); }

// Lanes [a, e) of a 16-lane vector (a < e, both relative to the vector's first lane).
inline __mmask16 range_mask(int64_t a, int64_t e) {
  const int64_t lo = a < 0 ? 0 : a, hi = e > 16 ? 16 : e;
  if (lo >= hi) return 0;
  return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// ---- scores of a few rows: per-key partial vectors, summed 16 at a time by a transpose-add tree.
// The tree's steps pair vectors so that each step halves the vectors and the lanes per sum:
// after all four, lane j holds the sum of every lane of input j (inputs ordered as below).

// [x0+x2, x1+x3, y0+y2, y1+y3] in 128-bit blocks: x's 8-lane partials low, y's high.
inline __m512 fold256(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
}
// From fold256(a, b) and fold256(c, d): 4-lane partials of a, b, c, d in blocks 0..3.
inline __m512 fold128(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
}
// From two fold128 results [a b c d] and [e f g h]: block i holds 2-lane partials of (x_i, y_i).
inline __m512 fold64(__m512 x, __m512 y) {
  const __m512d xd = _mm512_castps_pd(x), yd = _mm512_castps_pd(y);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(xd, yd)), _mm512_castpd_ps(_mm512_unpackhi_pd(xd, yd)));
}
// From two fold64 results: block i holds the full sums [x_i0, x_i1, y_i0, y_i1].
inline __m512 fold32(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x88), _mm512_shuffle_ps(x, y, 0xDD));
}
// Following the blocks through: quad k = fold128(fold256(v_k, v_k+4), fold256(v_k+8, v_k+12))
// holds keys k, k+4, k+8, k+12 in blocks 0..3; fold32(fold64(Q0, Q1), fold64(Q2, Q3)) puts key
// 4i + t in block i, lane t, i.e. lane j holds key j.

// s[i * ld + j] = q_i . k_j for R rows and 16 keys (key j < n; lanes >= n repeat key n - 1, whose
// row is inside the tile, so nothing outside it is read).
template <int R, class KV>
inline void scores_tree(const float* q, int64_t d, const KV* k, int64_t kstride, int64_t n, float* s,
                        int64_t ld) {
  __m512 pair[2][R];  // fold64(Q0, Q1) and fold64(Q2, Q3) of each row
  #pragma GCC unroll 16
  for (int k4 = 0; k4 < 4; ++k4) {
    const KV* kr[4];
    #pragma GCC unroll 16
    for (int t = 0; t < 4; ++t) {
      const int64_t j = k4 + 4 * t;
      kr[t] = k + (j < n ? j : n - 1) * kstride;
    }
    __m512 acc[R][4];
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
      #pragma GCC unroll 16
      for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
      __m512 kv[4];
      #pragma GCC unroll 16
      for (int t = 0; t < 4; ++t) kv[t] = load16(kr[t] + c);
      #pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512 qv = _mm512_loadu_ps(q + i * d + c);
        #pragma GCC unroll 16
        for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_fmadd_ps(qv, kv[t], acc[i][t]);
      }
    }
    if (c < d) {
      const __mmask16 m = tail_mask(d - c);
      __m512 kv[4];
      #pragma GCC unroll 16
      for (int t = 0; t < 4; ++t) kv[t] = load16(m, kr[t] + c);
      #pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + i * d + c);
        #pragma GCC unroll 16
        for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_fmadd_ps(qv, kv[t], acc[i][t]);
      }
    }
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 quad = fold128(fold256(acc[i][0], acc[i][1]), fold256(acc[i][2], acc[i][3]));
      __m512& slot = pair[k4 / 2][i];
      slot = (k4 % 2 == 0) ? quad : fold64(slot, quad);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) _mm512_storeu_ps(s + i * ld, fold32(pair[0][i], pair[1][i]));
}

// ---- scores of many rows: the K tile transposed once, then q elements broadcast against it.

// kT[c * 16 + j] = k_j[c] for c < round_up(d, 16), j < 16 (0 for j >= n or c >= d).
template <class KV>
inline void transpose_keys(const KV* k, int64_t kstride, int64_t n, int64_t d, float* kT) {
  for (int64_t c0 = 0; c0 < d; c0 += 16) {
    const __mmask16 m = d - c0 >= 16 ? static_cast<__mmask16>(0xFFFF) : tail_mask(d - c0);
    __m512 r[16], t[16];
    #pragma GCC unroll 16
    for (int j = 0; j < 16; ++j)
      r[j] = j < n ? load16(m, k + j * kstride + c0) : _mm512_setzero_ps();
    // Pairs of rows interleaved by 32 bits, then by 64 bits: block L of u[4g + x] holds column
    // 4L + x of rows 4g..4g+3.
    #pragma GCC unroll 16
    for (int j = 0; j < 8; ++j) {
      t[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
      t[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
    }
    for (int g = 0; g < 4; ++g) {
      const __m512d a0 = _mm512_castps_pd(t[4 * g]), a1 = _mm512_castps_pd(t[4 * g + 1]);
      const __m512d b0 = _mm512_castps_pd(t[4 * g + 2]), b1 = _mm512_castps_pd(t[4 * g + 3]);
      r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
      r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
      r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
      r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    // Gather block L of the four row groups: column 4L + x.
    float* dst = kT + c0 * 16;
    #pragma GCC unroll 16
    for (int x = 0; x < 4; ++x) {
      const __m512 v01 = _mm512_shuffle_f32x4(r[x], r[4 + x], 0x88);   // g0 L0, g0 L2, g1 L0, g1 L2
      const __m512 w01 = _mm512_shuffle_f32x4(r[x], r[4 + x], 0xDD);   // g0 L1, g0 L3, g1 L1, g1 L3
      const __m512 v23 = _mm512_shuffle_f32x4(r[8 + x], r[12 + x], 0x88);
      const __m512 w23 = _mm512_shuffle_f32x4(r[8 + x], r[12 + x], 0xDD);
      _mm512_storeu_ps(dst + (0 + x) * 16, _mm512_shuffle_f32x4(v01, v23, 0x88));
      _mm512_storeu_ps(dst + (8 + x) * 16, _mm512_shuffle_f32x4(v01, v23, 0xDD));
      _mm512_storeu_ps(dst + (4 + x) * 16, _mm512_shuffle_f32x4(w01, w23, 0x88));
      _mm512_storeu_ps(dst + (12 + x) * 16, _mm512_shuffle_f32x4(w01, w23, 0xDD));
    }
  }
}

// s[i * ld + j] = q_i . k_j for R rows, j < 16, from the transposed tile; U partial sums per row
// keep enough independent FMAs in flight when R is small.
template <int R, int U>
inline void scores_bcast(const float* q, int64_t d, const float* kT, float* s, int64_t ld) {
  __m512 acc[R][U];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u) acc[i][u] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + U <= d; c += U)
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u) {
      const __m512 kv = _mm512_loadu_ps(kT + (c + u) * 16);
      #pragma GCC unroll 16
      for (int i = 0; i < R; ++i) acc[i][u] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * d + c + u]), kv, acc[i][u]);
    }
  for (; c < d; ++c) {
    const __m512 kv = _mm512_loadu_ps(kT + c * 16);
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) acc[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * d + c]), kv, acc[i][0]);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    __m512 v = acc[i][0];
    for (int u = 1; u < U; ++u) v = _mm512_add_ps(v, acc[i][u]);
    _mm512_storeu_ps(s + i * ld, v);
  }
}

// ---- PV: acc_i[0, 16C) += sum_{j in [a, e)} p[i, j] v_j[0, 16C), each V row loaded once for R rows.
template <int R, int C, class KV>
inline void pv_block(const float* p, int64_t ld, const KV* v, int64_t vstride, int64_t a, int64_t e,
                     float* acc, int64_t d, __mmask16 last) {
  __m512 r[R][C];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < C; ++u)
      r[i][u] = _mm512_maskz_loadu_ps(u == C - 1 ? last : static_cast<__mmask16>(0xFFFF), acc + i * d + 16 * u);
  for (int64_t j = a; j < e; ++j) {
    __m512 vv[C];
    const KV* vj = v + j * vstride;
    #pragma GCC unroll 16
    for (int u = 0; u < C; ++u)
      vv[u] = load16(u == C - 1 ? last : static_cast<__mmask16>(0xFFFF), vj + 16 * u);
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 pij = _mm512_set1_ps(p[i * ld + j]);
      #pragma GCC unroll 16
      for (int u = 0; u < C; ++u) r[i][u] = _mm512_fmadd_ps(pij, vv[u], r[i][u]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 16
    for (int u = 0; u < C; ++u)
      _mm512_mask_storeu_ps(acc + i * d + 16 * u, u == C - 1 ? last : static_cast<__mmask16>(0xFFFF), r[i][u]);
}

template <int R, class KV>
inline void pv_rows(const float* p, int64_t ld, const KV* v, int64_t vstride, int64_t a, int64_t e,
                    int64_t d, float* acc) {
  for (int64_t c = 0; c < d; c += 64) {
    const int64_t left = d - c;
    const int chunks = left >= 64 ? 4 : static_cast<int>((left + 15) / 16);
    const int64_t tail = left - 16 * (chunks - 1);
    const __mmask16 last = tail >= 16 ? static_cast<__mmask16>(0xFFFF) : tail_mask(tail);
    switch (chunks) {
      case 4: pv_block<R, 4, KV>(p, ld, v + c, vstride, a, e, acc + c, d, last); break;
      case 3: pv_block<R, 3, KV>(p, ld, v + c, vstride, a, e, acc + c, d, last); break;
      case 2: pv_block<R, 2, KV>(p, ld, v + c, vstride, a, e, acc + c, d, last); break;
      default: pv_block<R, 1, KV>(p, ld, v + c, vstride, a, e, acc + c, d, last); break;
    }
  }
}

struct Avx512Ops : Avx512Vec {
  static constexpr bool kTiled = true;
  // Below this many rows the tree reduction beats transposing the K tile (its cost is per tile).
  static constexpr int64_t kTransposeRows = 6;

  template <class KV>
  static inline void scores_tile(const float* q, int64_t rows, const KV* krows, int64_t kstride, int64_t n,
                                 int64_t d, float* s, int64_t ld, float* kT) {
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      const int64_t nn = n - j0 < 16 ? n - j0 : 16;
      const KV* k = krows + j0 * kstride;
      float* sj = s + j0;
      if (rows < kTransposeRows) {
        // Up to 4 rows share each K load (4 x 4 accumulators, q, K and partial sums fit the 32
        // registers).
        switch (rows) {
          case 5:
            scores_tree<3>(q, d, k, kstride, nn, sj, ld);
            scores_tree<2>(q + 3 * d, d, k, kstride, nn, sj + 3 * ld, ld);
            break;
          case 4: scores_tree<4>(q, d, k, kstride, nn, sj, ld); break;
          case 3: scores_tree<3>(q, d, k, kstride, nn, sj, ld); break;
          case 2: scores_tree<2>(q, d, k, kstride, nn, sj, ld); break;
          default: scores_tree<1>(q, d, k, kstride, nn, sj, ld); break;
        }
        continue;
      }
      transpose_keys(k, kstride, nn, d, kT);
      int64_t i = 0;
      for (; i + 8 <= rows; i += 8) scores_bcast<8, 2>(q + i * d, d, kT, sj + i * ld, ld);
      switch (rows - i) {
        case 7: scores_bcast<7, 2>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 6: scores_bcast<6, 2>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 5: scores_bcast<5, 2>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 4: scores_bcast<4, 4>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 3: scores_bcast<3, 4>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 2: scores_bcast<2, 4>(q + i * d, d, kT, sj + i * ld, ld); break;
        case 1: scores_bcast<1, 4>(q + i * d, d, kT, sj + i * ld, ld); break;
        default: break;
      }
    }
  }

  static inline float softmax_row(float* s, int64_t a, int64_t e, int64_t n, float* m, float* l) {
    // n <= kAttnTile = 32: at most two vectors, loaded once; lanes outside [a, e) are zeroed.
    const __mmask16 k0 = range_mask(a, e), k1 = n > 16 ? range_mask(a - 16, e - 16) : 0;
    const __m512 lowest = _mm512_set1_ps(-__builtin_inff());
    const __m512 v0 = _mm512_mask_loadu_ps(lowest, k0, s);
    const __m512 v1 = _mm512_mask_loadu_ps(lowest, k1, s + 16);
    const float mt = _mm512_reduce_max_ps(_mm512_max_ps(v0, v1));
    const float m_old = *m, m_new = mt > m_old ? mt : m_old;
    // e^(m_old - m_new): 1 when the max holds; 0 for the first keys (m_old = -inf, clamped).
    const float corr = m_new == m_old ? 1.0f : _mm512_cvtss_f32(exp_avx512(_mm512_set1_ps(m_old - m_new)));
    const __m512 vm = _mm512_set1_ps(m_new);
    const __m512 p0 = _mm512_maskz_mov_ps(k0, exp_avx512(_mm512_sub_ps(v0, vm)));
    _mm512_storeu_ps(s, p0);
    __m512 sum = p0;
    if (n > 16) {
      const __m512 p1 = _mm512_maskz_mov_ps(k1, exp_avx512(_mm512_sub_ps(v1, vm)));
      _mm512_storeu_ps(s + 16, p1);
      sum = _mm512_add_ps(sum, p1);
    }
    *m = m_new;
    *l = *l * corr + _mm512_reduce_add_ps(sum);
    return corr;
  }

  template <class KV>
  static inline void pv_tile(const float* p, int64_t ld, int64_t rows, const KV* vrows, int64_t vstride,
                             int64_t a, int64_t e, int64_t d, float* acc) {
    int64_t i = 0;
    for (; i + 6 <= rows; i += 6) pv_rows<6>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d);
    switch (rows - i) {
      case 5: pv_rows<5>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d); break;
      case 4: pv_rows<4>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d); break;
      case 3: pv_rows<3>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d); break;
      case 2: pv_rows<2>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d); break;
      case 1: pv_rows<1>(p + i * ld, ld, vrows, vstride, a, e, d, acc + i * d); break;
      default: break;
    }
  }
};

#include "attention/attention_task_impl.h"

}  // namespace

void attention_task_avx512(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  attention_task<Avx512Ops>(sh, task, pos0, sc);
}

}  // namespace pyllm
