// The exact (float-activation) CPU qlinear kernel for the block types without ISA-specific ones:
// Q5_0 and Q5_1 (blocks of 32) and the K-quants Q4_K, Q5_K, Q6_K (super-blocks of 256). Portable
// C++ (the compiler vectorizes the lane loops), for CPUs without AVX2 (qlinear_superblock_avx2.cpp
// is the kernel elsewhere) and as the decoder of single blocks (superblock_decode).
//
// Each block is decoded into float32 exactly as pyllm/weights/quant.py's reference decodes it:
// every weight is one exact product (d * sc * q, (q - 16) * d, (q - 32) * d * sc) or one rounding
// (q * d + m, d * sc * q - dmin * mn with both products exact), so the result differs from
// x @ dequant(W).T only in the order of float32 additions.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/half.h"
#include "common/quant_blocks.h"
#include "quant/qlinear.h"
#include "quant/superblock_scales.h"

namespace pyllm {

namespace {

void decode_q5_0(const uint8_t* p, float* out) {
  const float d = sb_load_f16(p + offsetof(BlockQ5_0, d));
  uint32_t qh;
  std::memcpy(&qh, p + offsetof(BlockQ5_0, qh), 4);
  const uint8_t* qs = p + offsetof(BlockQ5_0, qs);
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    out[j] = static_cast<float>(lo - 16) * d;
    out[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

void decode_q5_1(const uint8_t* p, float* out) {
  const float d = sb_load_f16(p + offsetof(BlockQ5_1, d)), m = sb_load_f16(p + offsetof(BlockQ5_1, m));
  uint32_t qh;
  std::memcpy(&qh, p + offsetof(BlockQ5_1, qh), 4);
  const uint8_t* qs = p + offsetof(BlockQ5_1, qs);
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    out[j] = static_cast<float>(lo) * d + m;
    out[j + 16] = static_cast<float>(hi) * d + m;
  }
}

// Q4_K (qh == nullptr) and Q5_K: chunk c of 64 weights reads qs[32c .. 32c + 32): low nibbles are
// sub-block 2c, high nibbles sub-block 2c + 1; Q5_K's fifth bit of weight l of sub-block i is bit
// i of qh[l].
void decode_k4(const uint8_t* p, const uint8_t* qh, const uint8_t* qs, float* out) {
  float scale[8], min[8];
  k_scales(p, scale, min);
  for (int c = 0; c < 4; ++c) {
    const int i0 = 2 * c, i1 = 2 * c + 1;
    for (int l = 0; l < 32; ++l) {
      int q0 = qs[32 * c + l] & 0x0F, q1 = qs[32 * c + l] >> 4;
      if (qh) {
        q0 |= ((qh[l] >> i0) & 1) << 4;
        q1 |= ((qh[l] >> i1) & 1) << 4;
      }
      out[64 * c + l] = scale[i0] * static_cast<float>(q0) - min[i0];
      out[64 * c + 32 + l] = scale[i1] * static_cast<float>(q1) - min[i1];
    }
  }
}

// Q6_K: in half h (128 weights), quarter k (32 weights, l = 0..31) takes the low (k < 2) or high
// nibble of ql[64h + 32(k % 2) + l] and bits 2k, 2k + 1 of qh[32h + l]; weight w uses scale w / 16.
void decode_q6_k(const uint8_t* p, float* out) {
  const uint8_t* ql = p + offsetof(BlockQ6_K, ql);
  const uint8_t* qh = p + offsetof(BlockQ6_K, qh);
  float scale[16];
  q6_scales(p, scale);
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      const uint8_t* lo = ql + 64 * h + 32 * (k % 2);
      const int shift = k < 2 ? 0 : 4;
      for (int l = 0; l < 32; ++l) {
        const int q = ((lo[l] >> shift) & 0x0F) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
        const int w = 128 * h + 32 * k + l;
        out[w] = static_cast<float>(q - 32) * scale[w / 16];
      }
    }
  }
}

void decode_block(int qtype, const uint8_t* p, float* out) {
  switch (qtype) {
    case kQ5_0: decode_q5_0(p, out); break;
    case kQ5_1: decode_q5_1(p, out); break;
    case kQ4_K: decode_k4(p, nullptr, p + offsetof(BlockQ4_K, qs), out); break;
    case kQ5_K: decode_k4(p, p + offsetof(BlockQ5_K, qh), p + offsetof(BlockQ5_K, qs), out); break;
    default: decode_q6_k(p, out);
  }
}

constexpr int kTokens = 4;  // tokens per pass over a row's blocks
constexpr int kLanes = 32;  // partial sums per token

}  // namespace

void superblock_decode(int qtype, const uint8_t* block, float* out) { decode_block(qtype, block, out); }

void qlinear_tile_superblock(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  const int bsize = superblock_weights(a.qtype);
  const int64_t bbytes = superblock_bytes(a.qtype);
  const int64_t blocks = a.K / bsize;
  float w[kQK_K];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.w + n * a.ldw;
    for (int64_t tb = t0; tb < t1; tb += kTokens) {
      const int tt = static_cast<int>(std::min<int64_t>(kTokens, t1 - tb));
      float acc[kTokens][kLanes] = {};
      for (int64_t b = 0; b < blocks; ++b) {
        decode_block(a.qtype, row + b * bbytes, w);
        for (int t = 0; t < tt; ++t) {
          const float* xp = a.x + (tb + t) * a.ldx + b * bsize;
          for (int c = 0; c < bsize; c += kLanes) {
            for (int i = 0; i < kLanes; ++i) acc[t][i] += w[c + i] * xp[c + i];
          }
        }
      }
      for (int t = 0; t < tt; ++t) {
        float s = 0.f;
        for (int i = 0; i < kLanes; ++i) s += acc[t][i];
        if (a.bias) s += a.bias[n];
        a.out[(tb + t) * a.ldo + n] = s;
      }
    }
  }
}

}  // namespace pyllm
