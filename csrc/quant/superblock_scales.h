// Scalar pieces of the Q5_0/Q5_1/K-quant block formats that every kernel of theirs shares (the
// portable, AVX2 and int8 kernels): fp16 loads and the unpacking of the K-quants' 6-bit scales.
// static inline, so each instruction-set file keeps its own copy (tests/test_isa_isolation.py).
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include <type_traits>

#include "common/half.h"
#include "common/quant_blocks.h"
#include "quant/qlinear.h"

namespace pyllm {

// Calls f(std::integral_constant<int, QT>()) for the run-time qtype (one of the
// qlinear_superblock_qtype types), so a kernel templated on QT is written once per file.
template <typename F>
static inline void dispatch_superblock(int qtype, F&& f) {
  switch (qtype) {
    case kQ5_0: f(std::integral_constant<int, kQ5_0>()); break;
    case kQ5_1: f(std::integral_constant<int, kQ5_1>()); break;
    case kQ4_K: f(std::integral_constant<int, kQ4_K>()); break;
    case kQ5_K: f(std::integral_constant<int, kQ5_K>()); break;
    default: f(std::integral_constant<int, kQ6_K>()); break;
  }
}

// F16C's conversion in files built for AVX2 and above (one instruction instead of a branchy
// bit-level decode: these loads sit in the kernels' per-block loops); both are exact.
static inline float sb_load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  return fp16_to_float(h);
#endif
}

// The 8 (scale, min) pairs of a Q4_K / Q5_K super-block at p, multiplied by its d and dmin (each
// an exact float32 product: an 11-bit half times a 6-bit integer). The packing is described on
// BlockQ4_K in common/quant_blocks.h.
static inline void k_scales(const uint8_t* p, float* scale, float* min) {
  const float d = sb_load_f16(p + offsetof(BlockQ4_K, d)), dmin = sb_load_f16(p + offsetof(BlockQ4_K, dmin));
  const uint8_t* s = p + offsetof(BlockQ4_K, scales);
  for (int i = 0; i < 8; ++i) {
    int sc, mn;
    if (i < 4) {
      sc = s[i] & 63;
      mn = s[i + 4] & 63;
    } else {
      sc = (s[i + 4] & 0x0F) | ((s[i - 4] >> 6) << 4);
      mn = (s[i + 4] >> 4) | ((s[i] >> 6) << 4);
    }
    scale[i] = d * static_cast<float>(sc);
    min[i] = dmin * static_cast<float>(mn);
  }
}

// The 16 sub-block scales of a Q6_K super-block at p, multiplied by its d (exact: 11 x 8 bits).
static inline void q6_scales(const uint8_t* p, float* scale) {
  const float d = sb_load_f16(p + offsetof(BlockQ6_K, d));
  const uint8_t* sc = p + offsetof(BlockQ6_K, scales);
  for (int i = 0; i < 16; ++i) scale[i] = d * static_cast<float>(static_cast<int8_t>(sc[i]));
}

}  // namespace pyllm
