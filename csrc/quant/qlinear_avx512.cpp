// qlinear with AVX-512 (F + BW + VL): a 32-weight chunk is two 16-lane vectors, decoded in
// registers (a Q4 chunk's 16 bytes widen to 16 int32: low nibbles are weights 0..15, high
// nibbles 16..31) and multiplied into float32 accumulators; same tiling as the AVX2 kernel.
// Compiled everywhere, run only where cpu_isa() reports AVX-512.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant/qlinear.h"
#include "quant/qlinear_blocks.h"

namespace pyllm {

namespace {

inline __m512 bcast_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm512_set1_ps(_cvtsh_ss(h));
}

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// decode(p, lo, hi): weights 0..15 in lo, 16..31 in hi.
template <int QT>
struct Dec;

template <>
struct Dec<kQ4_0> {
  static constexpr int64_t kBytes = 18;
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    const __m512 d = bcast_f16(p);
    const __m512i v = _mm512_cvtepu8_epi32(load16(p + 2));
    const __m512i eight = _mm512_set1_epi32(8);
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)), eight)), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight)), d);
  }
};

template <>
struct Dec<kQ4_1> {
  static constexpr int64_t kBytes = 20;
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    const __m512 d = bcast_f16(p), m = bcast_f16(p + 2);
    const __m512i v = _mm512_cvtepu8_epi32(load16(p + 4));
    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F))), d, m);
    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), d, m);
  }
};

template <>
struct Dec<kQ8_0> {
  static constexpr int64_t kBytes = 34;
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    const __m512 d = bcast_f16(p);
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p + 2))), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p + 18))), d);
  }
};

template <>
struct Dec<kQF16> {
  static constexpr int64_t kBytes = 64;
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    lo = _mm512_cvtph_ps(load32(p));
    hi = _mm512_cvtph_ps(load32(p + 32));
  }
};

template <>
struct Dec<kQBF16> {
  static constexpr int64_t kBytes = 64;
  static __m512 widen(const uint8_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load32(p)), 16));
  }
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    lo = widen(p);
    hi = widen(p + 32);
  }
};

template <>
struct Dec<kQF32> {
  static constexpr int64_t kBytes = 128;
  static void decode(const uint8_t* p, __m512& lo, __m512& hi) {
    lo = _mm512_loadu_ps(reinterpret_cast<const float*>(p));
    hi = _mm512_loadu_ps(reinterpret_cast<const float*>(p) + 16);
  }
};

constexpr bool is_float_type(int qt) { return qt == kQF32 || qt == kQF16 || qt == kQBF16; }

template <int QT, int R, int TT>
void micro(const QLinearArgs& a, int64_t t0, int64_t n0) {
  constexpr int S = (R * TT <= 4) ? 2 : 1;
  const int64_t chunks = a.K / kQBlock;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = a.w + (n0 + r) * a.ldw;
  const float* xs[TT];
  for (int t = 0; t < TT; ++t) xs[t] = a.x + (t0 + t) * a.ldx;

  __m512 acc[S][TT][R];
  for (int s = 0; s < S; ++s)
    for (int t = 0; t < TT; ++t)
      for (int r = 0; r < R; ++r) acc[s][t][r] = _mm512_setzero_ps();

  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = c * Dec<QT>::kBytes;
    __m512 wlo[R], whi[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) Dec<QT>::decode(rows[r] + off, wlo[r], whi[r]);
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      const __m512 xlo = _mm512_loadu_ps(xs[t] + c * kQBlock);
      const __m512 xhi = _mm512_loadu_ps(xs[t] + c * kQBlock + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[0][t][r] = _mm512_fmadd_ps(wlo[r], xlo, acc[0][t][r]);
        acc[S - 1][t][r] = _mm512_fmadd_ps(whi[r], xhi, acc[S - 1][t][r]);
      }
    }
  }

  for (int t = 0; t < TT; ++t) {
    for (int r = 0; r < R; ++r) {
      float s = _mm512_reduce_add_ps(S == 2 ? _mm512_add_ps(acc[0][t][r], acc[S - 1][t][r]) : acc[0][t][r]);
      if constexpr (is_float_type(QT)) {
        for (int64_t k = chunks * kQBlock; k < a.K; ++k) s += float_row_elem(QT, rows[r], k) * xs[t][k];
      }
      if (a.bias) s += a.bias[n0 + r];
      a.out[(t0 + t) * a.ldo + n0 + r] = s;
    }
  }
}

template <int QT, int R, int TT>
void rows_pass(const QLinearArgs& a, int64_t t0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) micro<QT, R, TT>(a, t0, n);
  for (; n < n1; ++n) micro<QT, 1, TT>(a, t0, n);
}

template <int QT>
void tile(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  constexpr int R = 2, TT = 6;  // 12 accumulators of the 32 zmm registers
  if (t1 - t0 < TT) {
    for (int64_t t = t0; t < t1; ++t) rows_pass<QT, 4, 1>(a, t, n0, n1);
    return;
  }
  const int64_t row_block = std::max<int64_t>(R, (256 * 1024) / std::max<int64_t>(a.ldw, 1) / R * R);
  for (int64_t nb = n0; nb < n1; nb += row_block) {
    const int64_t ne = std::min(n1, nb + row_block);
    int64_t t = t0;
    for (; t + TT <= t1; t += TT) rows_pass<QT, R, TT>(a, t, nb, ne);
    for (; t < t1; ++t) rows_pass<QT, 4, 1>(a, t, nb, ne);
  }
}

}  // namespace

void qlinear_tile_avx512(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  switch (a.qtype) {
    case kQ4_0: tile<kQ4_0>(a, t0, t1, n0, n1); break;
    case kQ4_1: tile<kQ4_1>(a, t0, t1, n0, n1); break;
    case kQ8_0: tile<kQ8_0>(a, t0, t1, n0, n1); break;
    case kQF16: tile<kQF16>(a, t0, t1, n0, n1); break;
    case kQBF16: tile<kQBF16>(a, t0, t1, n0, n1); break;
    default: tile<kQF32>(a, t0, t1, n0, n1); break;
  }
}

}  // namespace pyllm
