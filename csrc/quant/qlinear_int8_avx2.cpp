// The int8-activation qlinear with AVX2 (see qlinear_int8.h for the math), for CPUs without
// AVX-512 VNNI. Same panel idea as qlinear_int8_avx512.cpp at half the width: 8 rows, each
// 32-byte vector holding four consecutive k of each row. vpmaddubsw multiplies unsigned by signed
// bytes into saturating int16 pairs, so the operands are kept where no pair can saturate:
//  * Q4: nibbles (0..15) x codes (-127..127): a pair is at most 3810, so a block's 8 code vectors
//    add up in int16 (at most 30480) before one vpmaddwd widens them to int32;
//  * Q8_0: |w| (0..128) x (codes with w's sign): a pair is at most 32512, widened per vector.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common/thread_scratch.h"
#include "quant/qlinear_blocks.h"
#include "quant/qlinear_int8.h"

namespace pyllm {

namespace {

constexpr int kRows = 8, kTokens = 4;
constexpr int kPanelVecs = 10;  // per block: 8 code vectors, d[8], m[8] (Q4_1)

struct PanelTag;
__m256i* panel_buffer(int64_t vecs) { return thread_scratch<__m256i, PanelTag>(static_cast<size_t>(vecs), 32); }

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <int QT>
void pack(const QLinearArgs& a, int64_t n, int rows, int64_t blocks, __m256i* panel) {
  const int64_t cbytes = qchunk_bytes(QT);
  alignas(32) int32_t live_lanes[kRows];
  for (int r = 0; r < kRows; ++r) live_lanes[r] = r < rows ? -1 : 0;
  const __m256i live = _mm256_load_si256(reinterpret_cast<const __m256i*>(live_lanes));
  const __m256i vidx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(a.ldw)));
  const __m256i zero = _mm256_setzero_si256(), low4 = _mm256_set1_epi8(0x0F);
  const uint8_t* base = a.w + n * a.ldw;
  auto gather = [&](const uint8_t* p) {
    return _mm256_mask_i32gather_epi32(zero, reinterpret_cast<const int*>(p), vidx, live, 1);
  };
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = base + b * cbytes;
    __m256i* o = panel + b * kPanelVecs;
    const __m256i head = gather(p);
    const __m128i dh = _mm_packus_epi32(_mm256_castsi256_si128(_mm256_and_si256(head, _mm256_set1_epi32(0xFFFF))),
                                        _mm256_extracti128_si256(_mm256_and_si256(head, _mm256_set1_epi32(0xFFFF)), 1));
    o[8] = _mm256_castps_si256(_mm256_cvtph_ps(dh));
    if constexpr (QT == kQ8_0) {
      for (int j = 0; j < 8; ++j) o[j] = gather(p + 2 + 4 * j);
    } else {
      const uint8_t* codes = p + (QT == kQ4_1 ? 4 : 2);
      for (int j = 0; j < 4; ++j) {
        const __m256i g = gather(codes + 4 * j);
        o[j] = _mm256_and_si256(g, low4);
        o[4 + j] = _mm256_and_si256(_mm256_srli_epi16(g, 4), low4);
      }
      if constexpr (QT == kQ4_1) {
        const __m256i mh = _mm256_srli_epi32(head, 16);
        o[9] = _mm256_castps_si256(_mm256_cvtph_ps(
            _mm_packus_epi32(_mm256_castsi256_si128(mh), _mm256_extracti128_si256(mh, 1))));
      }
    }
  }
}

template <int QT, int MT>
void micro(const Int8Acts& q, int64_t t, int64_t blocks, const __m256i* panel, float* out, int64_t ldo, int rows,
           const float* bias) {
  __m256 accf[MT];
  for (int i = 0; i < MT; ++i) accf[i] = _mm256_setzero_ps();
  const int8_t* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = q.q + (t + i) * q.K;
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i* pb = panel + b * kPanelVecs;
    __m256i acci[MT];
    if constexpr (QT == kQ8_0) {
      for (int i = 0; i < MT; ++i) acci[i] = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i w = _mm256_load_si256(pb + j), wabs = _mm256_abs_epi8(w);
        for (int i = 0; i < MT; ++i) {
          const __m256i x = _mm256_sign_epi8(_mm256_set1_epi32(load_i32(xs[i] + b * kQBlock + 4 * j)), w);
          acci[i] = _mm256_add_epi32(acci[i], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, x), ones16));
        }
      }
    } else {
      __m256i acc16[MT];
      for (int i = 0; i < MT; ++i) acc16[i] = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i w = _mm256_load_si256(pb + j);
        for (int i = 0; i < MT; ++i)
          acc16[i] = _mm256_add_epi16(
              acc16[i], _mm256_maddubs_epi16(w, _mm256_set1_epi32(load_i32(xs[i] + b * kQBlock + 4 * j))));
      }
      for (int i = 0; i < MT; ++i) {
        acci[i] = _mm256_madd_epi16(acc16[i], ones16);
        if constexpr (QT == kQ4_0)
          acci[i] = _mm256_sub_epi32(acci[i], _mm256_set1_epi32(8 * q.qsum[(t + i) * blocks + b]));
      }
    }
    const __m256 d = _mm256_castsi256_ps(pb[8]);
    for (int i = 0; i < MT; ++i) {
      const int64_t at = (t + i) * blocks + b;
      accf[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acci[i]), _mm256_mul_ps(d, _mm256_set1_ps(q.scale[at])), accf[i]);
      if constexpr (QT == kQ4_1) accf[i] = _mm256_fmadd_ps(_mm256_castsi256_ps(pb[9]), _mm256_set1_ps(q.xsum[at]), accf[i]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    alignas(32) float v[kRows];
    _mm256_store_ps(v, accf[i]);
    float* o = out + i * ldo;
    for (int r = 0; r < rows; ++r) o[r] = v[r] + (bias ? bias[r] : 0.f);
  }
}

template <int QT, int MT>
void micro_upto(int mt, const Int8Acts& q, int64_t t, int64_t blocks, const __m256i* panel, float* out, int64_t ldo,
                int rows, const float* bias) {
  if constexpr (MT > 1) {
    if (mt < MT) return micro_upto<QT, MT - 1>(mt, q, t, blocks, panel, out, ldo, rows, bias);
  }
  micro<QT, MT>(q, t, blocks, panel, out, ldo, rows, bias);
}

template <int QT>
void tile(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  const int64_t blocks = a.K / kQBlock;
  __m256i* panel = panel_buffer(std::max<int64_t>(blocks, 1) * kPanelVecs);
  for (int64_t n = n0; n < n1; n += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
    pack<QT>(a, n, rows, blocks, panel);
    for (int64_t t = t0; t < t1; t += kTokens) {
      const int mt = static_cast<int>(std::min<int64_t>(kTokens, t1 - t));
      micro_upto<QT, kTokens>(mt, q, t, blocks, panel, a.out + t * a.ldo + n, a.ldo, rows,
                               a.bias ? a.bias + n : nullptr);
    }
  }
}

}  // namespace

void qlinear_int8_tile_avx2(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                            int64_t n1) {
  switch (a.qtype) {
    case kQ4_0: tile<kQ4_0>(a, q, t0, t1, n0, n1); break;
    case kQ4_1: tile<kQ4_1>(a, q, t0, t1, n0, n1); break;
    default: tile<kQ8_0>(a, q, t0, t1, n0, n1); break;
  }
}

}  // namespace pyllm
