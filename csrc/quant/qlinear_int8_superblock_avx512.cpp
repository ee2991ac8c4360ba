// The int8-activation qlinear for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K with AVX-512 VNNI, on matrices
// prepacked once (qlinear_int8_pack_superblock_avx512, when the model's runner switches int8 on,
// or per call with qlinear_cpu's prepack flag); calls without panels go to the AVX2 row kernel
// (qlinear_int8_superblock_avx2.cpp, which also states the sums computed).
//
// The panels take about the GGUF blocks' bytes (panel_bytes below): the code bytes of 16 rows
// interleaved a dword each, as they are in the blocks (nibbles unmasked, high bits in their own
// vectors), split per use with shifts and masks. A micro-kernel issues one vpdpbusd per code
// vector and token (64 exact multiply-adds an instruction) and scales each 32-weight group's
// int32 sums once. Centred codes are corrected exactly as the Q4_0/Q8_0 panels are: the sum
// starts at -16 (Q5_0) or -32 (Q6_K, per 16-weight half) times the activation codes' sum, so it
// comes out as the sum of (q - centre) * q_x. Q5_0 / Q5_1: per block, 4 vectors of nibble bytes
// (dword r of vector j = row r's qs bytes 4j .. 4j+3: low nibbles are weights 4j.., high nibbles
// 16 + 4j..), one vector of fifth bits rearranged so that bit 8b + j of dword r is weight
// 4j + b's and bit 8b + 4 + j weight 16 + 4j + b's (a shift and a mask then put each at bit 4
// of its code byte), and the 16 rows' fp16 d (then m, Q5_1).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/thread_scratch.h"
#include "quant/qlinear_int8.h"
#include "quant/superblock_codes_avx2.h"
#include "quant/superblock_scales.h"

namespace pyllm {

namespace {

constexpr int kRows = 16, kTokens = 8;
struct HalfSumTag;

// Q6_K's integer sums start at -32 times the activation codes' sum over each 16-weight half of
// block g (first[i] and second[i] for token t + i), so they come out as sums of (q - 32) q_x.
template <int MT>
inline void q6_centring_starts(const Int8Acts& q, int64_t t, int64_t g, const int32_t* half_sums, int64_t groups,
                               __m512i* first, __m512i* second) {
  for (int i = 0; i < MT; ++i) {
    const int32_t all = q.qsum[(t + i) * q.blocks + g], lo = half_sums[i * groups + g];
    first[i] = _mm512_set1_epi32(-32 * lo);
    second[i] = _mm512_set1_epi32(-32 * (all - lo));
  }
}

// Each token's activation-code sums over the first 16 values of every 32-value block (Q6_K's
// sub-blocks of 16 need them apart), for tokens [t0, t1): out[(t - t0) * blocks + g].
int32_t* first_half_sums(const Int8Acts& q, int64_t t0, int64_t t1) {
  int32_t* out = thread_scratch<int32_t, HalfSumTag>(static_cast<size_t>(std::max<int64_t>((t1 - t0) * q.blocks, 1)), 64);
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t g = 0; g < q.blocks; ++g) {
      const int8_t* x = q.q + t * q.K + kQK * g;
      int32_t s = 0;
      for (int i = 0; i < 16; ++i) s += x[i];
      out[(t - t0) * q.blocks + g] = s;
    }
  return out;
}

// ------------------------------------------------------------------ prepacked panels

// Bytes of one block's panel (16 rows). Q5_0/Q5_1 and Q6_K: exactly the 16 blocks' bytes. Q4_K:
// the codes (32 vectors: chunk c's code vector j holds row r's qs bytes 32c + 4j .. + 3, low
// nibbles sub-block 2c, high nibbles 2c + 1), the 16 rows' fp16 d and dmin, then their 8 scales
// and 8 mins unpacked to a byte each (scale i of row r at 16i + r): 64 bytes more than the
// blocks' 2304 (2.8 %). Q5_K: 8 vectors of fifth bits (qh bytes 4j .. + 3 of each row) first.
// Q6_K: 32 vectors of ql (half h, 32-byte group g, j: ql bytes 64h + 32g + 4j ..), 16 of qh
// (half h, j: qh bytes 32h + 4j ..), the 16 sub-block scales (scale i of row r at 16i + r), the
// rows' fp16 d.
template <int QT>
constexpr int64_t panel_bytes() {
  return QT == kQ4_K ? 32 * 64 + 64 + 256 : QT == kQ5_K ? 8 * 64 + 32 * 64 + 64 + 256 : kRows * superblock_bytes(QT);
}


// The fifth-bit word of a prepacked panel for one row's u32 qh (layout in the header comment).
inline uint32_t spread_fifth_bits(uint32_t qh) {
  uint32_t out = 0;
  for (int j = 0; j < 4; ++j)
    for (int b = 0; b < 4; ++b) {
      out |= ((qh >> (4 * j + b)) & 1u) << (8 * b + j);
      out |= ((qh >> (16 + 4 * j + b)) & 1u) << (8 * b + 4 + j);
    }
  return out;
}

template <int QT>
void pack_q5(const QLinearArgs& a, uint8_t* dst) {
  constexpr int64_t kQh = QT == kQ5_0 ? offsetof(BlockQ5_0, qh) : offsetof(BlockQ5_1, qh);
  constexpr int64_t kQs = QT == kQ5_0 ? offsetof(BlockQ5_0, qs) : offsetof(BlockQ5_1, qs);
  const int64_t blocks = a.K / kQK;
  for (int64_t n = 0; n < a.N; n += kRows) {
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* o = dst + ((n / kRows) * blocks + b) * panel_bytes<QT>();
      std::memset(o, 0, static_cast<size_t>(panel_bytes<QT>()));  // missing rows: all zero
      for (int r = 0; r < kRows && n + r < a.N; ++r) {
        const uint8_t* p = a.w + (n + r) * a.ldw + b * superblock_bytes(QT);
        for (int j = 0; j < 4; ++j) std::memcpy(o + 64 * j + 4 * r, p + kQs + 4 * j, 4);
        uint32_t qh;
        std::memcpy(&qh, p + kQh, 4);
        const uint32_t bits = spread_fifth_bits(qh);
        std::memcpy(o + 256 + 4 * r, &bits, 4);
        std::memcpy(o + 320 + 2 * r, p, 2);                                                  // d
        if constexpr (QT == kQ5_1) std::memcpy(o + 352 + 2 * r, p + offsetof(BlockQ5_1, m), 2);  // m
      }
    }
  }
}

template <int QT, int MT>
void micro_q5(const Int8Acts& q, int64_t t, int64_t blocks, const uint8_t* panel, float* out, int64_t ldo,
              __mmask16 live, const float* bias) {
  __m512 accf[MT];
  for (int i = 0; i < MT; ++i) accf[i] = _mm512_setzero_ps();
  const int8_t* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = q.q + (t + i) * q.K;
  const __m512i low4 = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* pb = panel + b * panel_bytes<QT>();
    const __m512i fifth = _mm512_loadu_si512(pb + 256);
    __m512i acc[MT];
    for (int i = 0; i < MT; ++i)
      acc[i] = QT == kQ5_0 ? _mm512_set1_epi32(-16 * q.qsum[(t + i) * q.blocks + b]) : _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i g = _mm512_loadu_si512(pb + 64 * j);
      // 0xEA: (A & B) | C, here (nibbles & 0x0F) | (the fifth bit at bit 4)
      const __m512i lo = _mm512_ternarylogic_epi32(g, low4, _mm512_and_si512(_mm512_slli_epi32(fifth, 4 - j), bit4), 0xEA);
      const __m512i hi =
          _mm512_ternarylogic_epi32(_mm512_srli_epi32(g, 4), low4, _mm512_and_si512(_mm512_srli_epi32(fifth, j), bit4), 0xEA);
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i) {
        int32_t xl, xh;
        std::memcpy(&xl, xs[i] + kQK * b + 4 * j, 4);
        std::memcpy(&xh, xs[i] + kQK * b + 16 + 4 * j, 4);
        acc[i] = _mm512_dpbusd_epi32(acc[i], lo, _mm512_set1_epi32(xl));
        acc[i] = _mm512_dpbusd_epi32(acc[i], hi, _mm512_set1_epi32(xh));
      }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + 320)));
    for (int i = 0; i < MT; ++i) {
      const int64_t at = (t + i) * q.blocks + b;
      accf[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]), _mm512_mul_ps(d, _mm512_set1_ps(q.scale[at])), accf[i]);
      if constexpr (QT == kQ5_1) {
        const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + 352)));
        accf[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(q.xsum[at]), accf[i]);
      }
    }
  }
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(live, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MT; ++i) _mm512_mask_storeu_ps(out + i * ldo, live, _mm512_add_ps(accf[i], bv));
}


// Byte i of the 8 unpacked 6-bit scales (scale_out) and mins (min_out) of a K-quant super-block.
inline void k_scale_bytes(const uint8_t* s, uint8_t* scale_out, uint8_t* min_out) {
  for (int i = 0; i < 8; ++i) {
    if (i < 4) {
      scale_out[i] = s[i] & 63;
      min_out[i] = s[i + 4] & 63;
    } else {
      scale_out[i] = static_cast<uint8_t>((s[i + 4] & 0x0F) | ((s[i - 4] >> 6) << 4));
      min_out[i] = static_cast<uint8_t>((s[i + 4] >> 4) | ((s[i] >> 6) << 4));
    }
  }
}

template <int QT>
void pack_k(const QLinearArgs& a, uint8_t* dst) {
  const int64_t blocks = a.K / kQK_K;
  constexpr int64_t kHigh = QT == kQ5_K ? 8 * 64 : 0;  // Q5_K's fifth-bit vectors come first
  for (int64_t n = 0; n < a.N; n += kRows) {
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* o = dst + ((n / kRows) * blocks + b) * panel_bytes<QT>();
      std::memset(o, 0, static_cast<size_t>(panel_bytes<QT>()));  // missing rows: all zero
      for (int r = 0; r < kRows && n + r < a.N; ++r) {
        const uint8_t* p = a.w + (n + r) * a.ldw + b * superblock_bytes(QT);
        if constexpr (QT == kQ6_K) {
          for (int v = 0; v < 32; ++v) std::memcpy(o + 64 * v + 4 * r, p + offsetof(BlockQ6_K, ql) + 4 * v, 4);
          for (int v = 0; v < 16; ++v) std::memcpy(o + 2048 + 64 * v + 4 * r, p + offsetof(BlockQ6_K, qh) + 4 * v, 4);
          for (int i = 0; i < 16; ++i) o[3072 + 16 * i + r] = p[offsetof(BlockQ6_K, scales) + i];
          std::memcpy(o + 3328 + 2 * r, p + offsetof(BlockQ6_K, d), 2);
        } else {
          if constexpr (QT == kQ5_K)
            for (int v = 0; v < 8; ++v) std::memcpy(o + 64 * v + 4 * r, p + offsetof(BlockQ5_K, qh) + 4 * v, 4);
          const uint8_t* qs = p + (QT == kQ4_K ? offsetof(BlockQ4_K, qs) : offsetof(BlockQ5_K, qs));
          uint8_t* c = o + kHigh;
          for (int v = 0; v < 32; ++v) std::memcpy(c + 64 * v + 4 * r, qs + 4 * v, 4);
          std::memcpy(c + 2048 + 2 * r, p + offsetof(BlockQ4_K, d), 2);
          std::memcpy(c + 2080 + 2 * r, p + offsetof(BlockQ4_K, dmin), 2);
          uint8_t sc[8], mn[8];
          k_scale_bytes(p + offsetof(BlockQ4_K, scales), sc, mn);
          for (int i = 0; i < 8; ++i) {
            c[2112 + 16 * i + r] = sc[i];
            c[2240 + 16 * i + r] = mn[i];
          }
        }
      }
    }
  }
}

// 16 bytes at p (one per row) as 16 floats, read unsigned or signed.
inline __m512 row_bytes_u8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 row_bytes_s8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 row_halves(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Each byte's bits shifted left by s (right for negative s) within the dword lanes; callers mask
// the bits they place, which no neighbouring byte's bits reach.
inline __m512i shift_bits(__m512i v, int s) {
  return s >= 0 ? _mm512_sll_epi32(v, _mm_cvtsi32_si128(s)) : _mm512_srl_epi32(v, _mm_cvtsi32_si128(-s));
}

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Asks for the next block's panel bytes ahead. Q6_K's reads jump between its low-bit, high-bit
// and scale areas, which the hardware prefetcher does not follow far enough ahead: at one token,
// 30 of SmolLM2's 576x1536 matrices out of cache ran ~4x slower than one in cache, 2.5x faster
// with this. (Q4_K, read mostly in order, measured no different with it.)
inline void prefetch_next(const uint8_t* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
}

// Q4_K / Q5_K: out[t .. t+MT)[16 rows] from a prepacked panel.
template <int QT, int MT>
void micro_k(const Int8Acts& q, int64_t t, int64_t blocks, const uint8_t* panel, float* out, int64_t ldo,
             __mmask16 live, const float* bias) {
  constexpr int64_t kHigh = QT == kQ5_K ? 8 * 64 : 0;
  __m512 accf[MT];
  for (int i = 0; i < MT; ++i) accf[i] = _mm512_setzero_ps();
  const int8_t* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = q.q + (t + i) * q.K;
  const __m512i low4 = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* pb = panel + b * panel_bytes<QT>();
    const uint8_t* pc = pb + kHigh;
    const __m512 d = row_halves(pc + 2048), dmin = row_halves(pc + 2080);
    for (int c = 0; c < 4; ++c) {
      __m512i lo_acc[MT], hi_acc[MT];
      for (int i = 0; i < MT; ++i) lo_acc[i] = hi_acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m512i g = _mm512_loadu_si512(pc + 64 * (8 * c + j));
        __m512i lo = _mm512_and_si512(g, low4), hi = _mm512_and_si512(_mm512_srli_epi32(g, 4), low4);
        if constexpr (QT == kQ5_K) {  // bit 2c (2c + 1) of each qh byte is its lo (hi) code's fifth
          const __m512i h = _mm512_loadu_si512(pb + 64 * j);
          lo = _mm512_or_si512(lo, _mm512_and_si512(shift_bits(h, 4 - 2 * c), bit4));
          hi = _mm512_or_si512(hi, _mm512_and_si512(shift_bits(h, 3 - 2 * c), bit4));
        }
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {
          const int8_t* x = xs[i] + kQK_K * b + 64 * c + 4 * j;
          lo_acc[i] = _mm512_dpbusd_epi32(lo_acc[i], lo, _mm512_set1_epi32(load4(x)));
          hi_acc[i] = _mm512_dpbusd_epi32(hi_acc[i], hi, _mm512_set1_epi32(load4(x + 32)));
        }
      }
      // d * sc and dmin * mn per row: the exact products the reference makes.
      const __m512 sc_lo = _mm512_mul_ps(d, row_bytes_u8(pc + 2112 + 16 * (2 * c)));
      const __m512 sc_hi = _mm512_mul_ps(d, row_bytes_u8(pc + 2112 + 16 * (2 * c + 1)));
      const __m512 mn_lo = _mm512_mul_ps(dmin, row_bytes_u8(pc + 2240 + 16 * (2 * c)));
      const __m512 mn_hi = _mm512_mul_ps(dmin, row_bytes_u8(pc + 2240 + 16 * (2 * c + 1)));
      for (int i = 0; i < MT; ++i) {
        const int64_t at = (t + i) * q.blocks + 8 * b + 2 * c;
        accf[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo_acc[i]), _mm512_mul_ps(sc_lo, _mm512_set1_ps(q.scale[at])), accf[i]);
        accf[i] = _mm512_fnmadd_ps(mn_lo, _mm512_set1_ps(q.xsum[at]), accf[i]);
        accf[i] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi_acc[i]), _mm512_mul_ps(sc_hi, _mm512_set1_ps(q.scale[at + 1])), accf[i]);
        accf[i] = _mm512_fnmadd_ps(mn_hi, _mm512_set1_ps(q.xsum[at + 1]), accf[i]);
      }
    }
  }
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(live, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MT; ++i) _mm512_mask_storeu_ps(out + i * ldo, live, _mm512_add_ps(accf[i], bv));
}

// Q6_K from a prepacked panel; half_sums as in micro().
template <int MT>
void micro_q6k(const Int8Acts& q, int64_t t, int64_t blocks, const uint8_t* panel, const int32_t* half_sums,
               float* out, int64_t ldo, __mmask16 live, const float* bias) {
  __m512 accf[MT];
  for (int i = 0; i < MT; ++i) accf[i] = _mm512_setzero_ps();
  const int8_t* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = q.q + (t + i) * q.K;
  const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  const int64_t groups = blocks * 8;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* pb = panel + b * panel_bytes<kQ6_K>();
    prefetch_next(pb + panel_bytes<kQ6_K>(), panel_bytes<kQ6_K>());
    const __m512 d = row_halves(pb + 3328);
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        const int group = 4 * h + k;
        const int64_t g_abs = 8 * b + group;
        __m512i acc_a[MT], acc_b[MT];
        q6_centring_starts<MT>(q, t, g_abs, half_sums, groups, acc_a, acc_b);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          const __m512i ql = _mm512_loadu_si512(pb + 64 * (16 * h + 8 * (k % 2) + j));
          const __m512i qh = _mm512_loadu_si512(pb + 2048 + 64 * (8 * h + j));
          const __m512i lo4 = _mm512_and_si512(k < 2 ? ql : _mm512_srli_epi32(ql, 4), low4);
          const __m512i codes = _mm512_or_si512(lo4, _mm512_and_si512(shift_bits(qh, 4 - 2 * k), bits45));
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i) {
            const __m512i x = _mm512_set1_epi32(load4(xs[i] + kQK_K * b + 128 * h + 32 * k + 4 * j));
            if (j < 4) acc_a[i] = _mm512_dpbusd_epi32(acc_a[i], codes, x);
            else acc_b[i] = _mm512_dpbusd_epi32(acc_b[i], codes, x);
          }
        }
        const __m512 s_a = _mm512_mul_ps(d, row_bytes_s8(pb + 3072 + 16 * (2 * group)));
        const __m512 s_b = _mm512_mul_ps(d, row_bytes_s8(pb + 3072 + 16 * (2 * group + 1)));
        for (int i = 0; i < MT; ++i) {
          const __m512 sx = _mm512_set1_ps(q.scale[(t + i) * q.blocks + g_abs]);
          accf[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc_a[i]), _mm512_mul_ps(s_a, sx), accf[i]);
          accf[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc_b[i]), _mm512_mul_ps(s_b, sx), accf[i]);
        }
      }
    }
  }
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(live, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MT; ++i) _mm512_mask_storeu_ps(out + i * ldo, live, _mm512_add_ps(accf[i], bv));
}

template <int QT, int MT>
void micro_packed(int mt, const Int8Acts& q, int64_t t, int64_t blocks, const uint8_t* panel,
                  const int32_t* half_sums, float* out, int64_t ldo, __mmask16 live, const float* bias) {
  if constexpr (MT > 1) {
    if (mt < MT) return micro_packed<QT, MT - 1>(mt, q, t, blocks, panel, half_sums, out, ldo, live, bias);
  }
  if constexpr (QT == kQ5_0 || QT == kQ5_1) micro_q5<QT, MT>(q, t, blocks, panel, out, ldo, live, bias);
  else if constexpr (QT == kQ6_K) micro_q6k<MT>(q, t, blocks, panel, half_sums, out, ldo, live, bias);
  else micro_k<QT, MT>(q, t, blocks, panel, out, ldo, live, bias);
}

template <int QT>
void tile_packed(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  const int64_t blocks = a.K / superblock_weights(QT);
  const int32_t* half_sums = QT == kQ6_K ? first_half_sums(q, t0, t1) : nullptr;
  for (int64_t n = n0; n < n1; n += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
    const uint8_t* panel = a.packed + (n / kRows) * blocks * panel_bytes<QT>();
    const __mmask16 live = rows >= kRows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rows) - 1u);
    for (int64_t t = t0; t < t1; t += kTokens) {
      const int mt = static_cast<int>(std::min<int64_t>(kTokens, t1 - t));
      micro_packed<QT, kTokens>(mt, q, t, blocks, panel, half_sums ? half_sums + (t - t0) * q.blocks : nullptr,
                                a.out + t * a.ldo + n, a.ldo, live, a.bias ? a.bias + n : nullptr);
    }
  }
}

}  // namespace

int64_t qlinear_int8_superblock_packed_bytes(int qtype, int64_t N, int64_t K) {
  int64_t bytes = 0;
  dispatch_superblock(qtype, [&](auto qt) {
    constexpr int QT = decltype(qt)::value;
    bytes = (N + kRows - 1) / kRows * (K / superblock_weights(QT)) * panel_bytes<QT>();
  });
  return bytes;
}

void qlinear_int8_pack_superblock_avx512(const QLinearArgs& a, uint8_t* dst) {
  dispatch_superblock(a.qtype, [&](auto qt) {
    constexpr int QT = decltype(qt)::value;
    if constexpr (QT == kQ5_0 || QT == kQ5_1) pack_q5<QT>(a, dst);
    else pack_k<QT>(a, dst);
  });
}

void qlinear_int8_tile_superblock_avx512(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                         int64_t n1) {
  // Prepacked panels need n0 on a panel boundary, which the driver's 16-row split guarantees.
  if (a.packed && n0 % kRows == 0) {
    dispatch_superblock(a.qtype, [&](auto qt) { tile_packed<decltype(qt)::value>(a, q, t0, t1, n0, n1); });
  } else {
    qlinear_int8_tile_superblock_avx2(a, q, t0, t1, n0, n1);
  }
}

}  // namespace pyllm
