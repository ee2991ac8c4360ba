// Portable decoding of one 32-weight chunk of a weight row into float32 (baseline paths and
// the K tails of the vector paths). Shared by the ISA files; no intrinsics here.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/half.h"
#include "quant/qlinear.h"

namespace pyllm {

static inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_float(h);
}

// Weight i (0 <= i < 32) of the chunk starting at `p`... decoded all at once into out[32].
static inline void dequant_chunk(int qtype, const uint8_t* p, float* out) {
  switch (qtype) {
    case kQ8_0: {
      const float d = load_f16(p + offsetof(BlockQ8_0, d));
      const uint8_t* q = p + kQuantsAt<BlockQ8_0>;
      for (int i = 0; i < kQK; ++i) out[i] = static_cast<float>(static_cast<int8_t>(q[i])) * d;
      break;
    }
    case kQ4_0: {
      const float d = load_f16(p + offsetof(BlockQ4_0, d));
      const uint8_t* q = p + kQuantsAt<BlockQ4_0>;
      for (int j = 0; j < kQK / 2; ++j) {
        out[j] = static_cast<float>((q[j] & 0x0F) - 8) * d;
        out[j + 16] = static_cast<float>((q[j] >> 4) - 8) * d;
      }
      break;
    }
    case kQ4_1: {
      const float d = load_f16(p + offsetof(BlockQ4_1, d)), m = load_f16(p + offsetof(BlockQ4_1, m));
      const uint8_t* q = p + kQuantsAt<BlockQ4_1>;
      for (int j = 0; j < kQK / 2; ++j) {
        out[j] = static_cast<float>(q[j] & 0x0F) * d + m;
        out[j + 16] = static_cast<float>(q[j] >> 4) * d + m;
      }
      break;
    }
    case kQF16:
      for (int i = 0; i < 32; ++i) out[i] = load_as_float(p, 1, i);
      break;
    case kQBF16:
      for (int i = 0; i < 32; ++i) out[i] = load_as_float(p, 2, i);
      break;
    default:
      std::memcpy(out, p, 32 * sizeof(float));
  }
}

// Element i of a float-typed row (the tails past the last whole chunk).
static inline float float_row_elem(int qtype, const uint8_t* row, int64_t i) {
  switch (qtype) {
    case kQF16: return load_as_float(row, 1, i);
    case kQBF16: return load_as_float(row, 2, i);
    default: return load_as_float(row, 0, i);
  }
}

}  // namespace pyllm
