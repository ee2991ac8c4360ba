// The int8-activation qlinear with AVX-512 VNNI (see qlinear_int8.h for the math).
//
// Weights are repacked 16 rows at a time into panels where each 64-byte vector holds four
// consecutive bytes of each of the 16 rows (row r in dword r), gathered straight from the GGUF
// rows: per call, or once ahead of time (qlinear_int8_pack_avx512, which the model's runner does
// when int8 activations are switched on), the panels taking as many bytes as the GGUF blocks. Then a micro-kernel keeps up to 8 tokens' int32
// accumulators (16 rows each) and, for each of a block's 8 code vectors, issues one vpdpbusd per
// token against that token's four activation codes broadcast to every dword: 64 exact
// multiply-adds an instruction, against 16 for a float FMA. Each block's integer sums are then
// converted and scaled once (cvt + FMA per token per 16 rows).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

constexpr int kRows = 16, kTokens = 8;

// 64-byte vectors a 16-row panel takes per block. Q4_0 / Q4_1: 4 code vectors (dword r = bytes
// 4j .. 4j+3 of row r's 16 code bytes: low nibbles are k = 4j .., high nibbles k = 16 + 4j ..),
// then one of scales (d[16] as fp16, then m[16] as fp16). Q8_0: 8 code vectors (k = 4j .., each
// code + 128 as an unsigned byte, so vpdpbusd can take the weights as its unsigned operand and
// the activation codes as they are), then one of scales (d[16] as fp16).
// The same bytes a block takes in the GGUF rows.
constexpr int panel_vecs(int qt) { return qt == kQ8_0 ? 9 : 5; }

struct PanelTag;
__m512i* panel_buffer(int64_t vecs) { return thread_scratch<__m512i, PanelTag>(static_cast<size_t>(vecs), 64); }

// XOR with this adds 128 to each of four int8 codes, giving them as unsigned bytes.
constexpr int32_t kFlip = static_cast<int32_t>(0x80808080u);

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline __mmask16 live_mask(int rows) {
  return rows >= kRows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rows) - 1u);
}

// Rows [n, n + rows) (rows <= 16) of every block into panel[b * panel_vecs(QT) ...]; missing rows zero.
template <int QT>
void pack(const QLinearArgs& a, int64_t n, int rows, int64_t blocks, __m512i* panel) {
  constexpr int V = panel_vecs(QT);
  const int64_t cbytes = qchunk_bytes(QT);
  const __mmask16 live = live_mask(rows);
  const __m512i vidx = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(static_cast<int>(a.ldw)));
  const __m512i zero = _mm512_setzero_si512(), flip = _mm512_set1_epi32(kFlip);
  const uint8_t* base = a.w + n * a.ldw;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = base + b * cbytes;
    __m512i* o = panel + b * V;
    const __m512i head = _mm512_mask_i32gather_epi32(zero, live, vidx, p, 1);
    const __m256i d16 = _mm512_cvtepi32_epi16(head);  // the low halves: d
    if constexpr (QT == kQ8_0) {
      // Missing rows get codes 0 + 128 and scale 0: they add nothing.
      for (int j = 0; j < 8; ++j) o[j] = _mm512_xor_si512(_mm512_mask_i32gather_epi32(zero, live, vidx, p + 2 + 4 * j, 1), flip);
      o[8] = _mm512_castsi256_si512(d16);
    } else {
      const uint8_t* codes = p + (QT == kQ4_1 ? 4 : 2);
      for (int j = 0; j < 4; ++j) o[j] = _mm512_mask_i32gather_epi32(zero, live, vidx, codes + 4 * j, 1);
      const __m256i m16 = QT == kQ4_1 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16)) : _mm256_setzero_si256();
      o[4] = _mm512_inserti64x4(_mm512_castsi256_si512(d16), m16, 1);
    }
  }
}

// out[t .. t+MT)[n .. n+16) (the `live` rows) = the panel's rows against MT tokens, plus bias.
template <int QT, int MT>
void micro(const Int8Acts& q, int64_t t, int64_t blocks, const __m512i* panel, float* out, int64_t ldo,
           __mmask16 live, const float* bias) {
  constexpr int V = panel_vecs(QT);
  __m512 accf[MT];
  for (int i = 0; i < MT; ++i) accf[i] = _mm512_setzero_ps();
  const int8_t* xs[MT];
  for (int i = 0; i < MT; ++i) xs[i] = q.q + (t + i) * q.K;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < blocks; ++b) {
    const __m512i* pb = panel + b * V;
    const int8_t* xb[MT];
    for (int i = 0; i < MT; ++i) xb[i] = xs[i] + b * kQBlock;
    __m512i acci[MT];
    // Start each block's integer sum at its correction term, so the sum comes out exact: the
    // unsigned weight operand is Q4_0's q + 8 and Q8_0's code + 128, i.e. 8 (128) times the
    // activation codes' sum too many.
    if constexpr (QT == kQ4_0 || QT == kQ8_0) {
      constexpr int32_t offset = QT == kQ4_0 ? 8 : 128;
      for (int i = 0; i < MT; ++i) acci[i] = _mm512_set1_epi32(-offset * q.qsum[(t + i) * blocks + b]);
    } else {
      for (int i = 0; i < MT; ++i) acci[i] = _mm512_setzero_si512();
    }
    if constexpr (QT == kQ8_0) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m512i w = _mm512_load_si512(pb + j);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i)  // u8 weights (codes + 128) x s8 activations
          acci[i] = _mm512_dpbusd_epi32(acci[i], w, _mm512_set1_epi32(load_i32(xb[i] + 4 * j)));
      }
    } else {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i g = _mm512_load_si512(pb + j);
        const __m512i lo = _mm512_and_si512(g, low4), hi = _mm512_and_si512(_mm512_srli_epi16(g, 4), low4);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {  // u8 nibbles x s8 activations
          acci[i] = _mm512_dpbusd_epi32(acci[i], lo, _mm512_set1_epi32(load_i32(xb[i] + 4 * j)));
          acci[i] = _mm512_dpbusd_epi32(acci[i], hi, _mm512_set1_epi32(load_i32(xb[i] + 16 + 4 * j)));
        }
      }
    }
    const __m512i sc = _mm512_load_si512(pb + (QT == kQ8_0 ? 8 : 4));
    const __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(sc));
    const __m512 m = QT == kQ4_1 ? _mm512_cvtph_ps(_mm512_extracti64x4_epi64(sc, 1)) : _mm512_setzero_ps();
    for (int i = 0; i < MT; ++i) {
      const int64_t at = (t + i) * blocks + b;
      accf[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[i]), _mm512_mul_ps(d, _mm512_set1_ps(q.scale[at])), accf[i]);
      if constexpr (QT == kQ4_1) accf[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(q.xsum[at]), accf[i]);
    }
  }
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(live, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MT; ++i) _mm512_mask_storeu_ps(out + i * ldo, live, _mm512_add_ps(accf[i], bv));
}

template <int QT, int MT>
void micro_upto(int mt, const Int8Acts& q, int64_t t, int64_t blocks, const __m512i* panel, float* out, int64_t ldo,
                __mmask16 live, const float* bias) {
  if constexpr (MT > 1) {
    if (mt < MT) return micro_upto<QT, MT - 1>(mt, q, t, blocks, panel, out, ldo, live, bias);
  }
  micro<QT, MT>(q, t, blocks, panel, out, ldo, live, bias);
}

template <int QT>
void tile(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  constexpr int V = panel_vecs(QT);
  const int64_t blocks = a.K / kQBlock;
  // Prepacked panels (a.packed, from qlinear_int8_pack_avx512) need n0 on a panel boundary, which
  // the driver's 16-row split guarantees; otherwise each panel is packed here, per call.
  const bool prepacked = a.packed != nullptr && n0 % kRows == 0;
  __m512i* scratch = prepacked ? nullptr : panel_buffer(std::max<int64_t>(blocks, 1) * V);
  for (int64_t n = n0; n < n1; n += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
    const __m512i* panel;
    if (prepacked) {
      panel = reinterpret_cast<const __m512i*>(a.packed) + (n / kRows) * blocks * V;
    } else {
      pack<QT>(a, n, rows, blocks, scratch);
      panel = scratch;
    }
    for (int64_t t = t0; t < t1; t += kTokens) {
      const int mt = static_cast<int>(std::min<int64_t>(kTokens, t1 - t));
      micro_upto<QT, kTokens>(mt, q, t, blocks, panel, a.out + t * a.ldo + n, a.ldo, live_mask(rows),
                               a.bias ? a.bias + n : nullptr);
    }
  }
}

template <int QT>
void pack_all(const QLinearArgs& a, uint8_t* dst) {
  const int64_t blocks = a.K / kQBlock;
  __m512i* out = reinterpret_cast<__m512i*>(dst);
  for (int64_t n = 0; n < a.N; n += kRows)
    pack<QT>(a, n, static_cast<int>(std::min<int64_t>(kRows, a.N - n)), blocks, out + (n / kRows) * blocks * panel_vecs(QT));
}

}  // namespace

void quantize_acts_avx512(const float* x, int64_t ldx, int64_t t0, int64_t t1, const Int8Acts& acts) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t t = t0; t < t1; ++t) {
    const float* xr = x + t * ldx;
    int8_t* q = const_cast<int8_t*>(acts.q) + t * acts.K;
    for (int64_t b = 0; b < acts.blocks; ++b) {
      const __m512 lo = _mm512_loadu_ps(xr + b * kQBlock), hi = _mm512_loadu_ps(xr + b * kQBlock + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, lo), _mm512_andnot_ps(sign, hi)));
      const float inv = amax > 0.f ? 127.0f / amax : 0.f;
      const __m512 vinv = _mm512_set1_ps(inv);
      // cvtps rounds with the MXCSR mode: to nearest, ties to even (what the reference's round does).
      const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, vinv));
      const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, vinv));
      const __m128i blo = _mm512_cvtepi32_epi8(qlo), bhi = _mm512_cvtepi32_epi8(qhi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQBlock), blo);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQBlock + 16), bhi);
      const int64_t at = t * acts.blocks + b;
      const float scale = amax / 127.0f;
      const int32_t qsum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
      const_cast<float*>(acts.scale)[at] = scale;
      const_cast<int32_t*>(acts.qsum)[at] = qsum;
      const_cast<float*>(acts.xsum)[at] = scale * static_cast<float>(qsum);
    }
  }
}

int64_t qlinear_int8_packed_bytes(int qtype, int64_t N, int64_t K) {
  if (qlinear_superblock_qtype(qtype)) return qlinear_int8_superblock_packed_bytes(qtype, N, K);
  return (N + kRows - 1) / kRows * (K / kQBlock) * panel_vecs(qtype) * 64;
}

void qlinear_int8_pack_avx512(const QLinearArgs& a, uint8_t* dst) {
  switch (a.qtype) {
    case kQ5_0: case kQ5_1: case kQ4_K: case kQ5_K: case kQ6_K: qlinear_int8_pack_superblock_avx512(a, dst); break;
    case kQ4_0: pack_all<kQ4_0>(a, dst); break;
    case kQ4_1: pack_all<kQ4_1>(a, dst); break;
    default: pack_all<kQ8_0>(a, dst); break;
  }
}

void qlinear_int8_tile_avx512(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                              int64_t n1) {
  switch (a.qtype) {
    case kQ4_0: tile<kQ4_0>(a, q, t0, t1, n0, n1); break;
    case kQ4_1: tile<kQ4_1>(a, q, t0, t1, n0, n1); break;
    default: tile<kQ8_0>(a, q, t0, t1, n0, n1); break;
  }
}

}  // namespace pyllm
