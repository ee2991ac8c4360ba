// The GGUF block formats the quantized kernels read, as typed structs: the one place that states
// their layouts and sizes, shared by the CPU (every ISA) and CUDA kernels. A row of K weights is
// K / kQK blocks back to back; fp16 fields are raw IEEE half bits (little-endian, as in the file).
//
// The Python side (pyllm/weights/quant.py, GGML's type table) states the same sizes; the test
// tests/test_quant_blocks.py reads the static_asserts below and compares them with that table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyllm {

constexpr int kQK = 32;  // weights per block of the Q4_0 / Q4_1 / Q8_0 formats

// Q4_0: w = (q - 8) * d. qs[j] holds weight j in its low nibble and weight j + 16 in its high one.
struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // 4-bit quants
};

// Q4_1: w = q * d + m, with qs laid out as in Q4_0.
struct BlockQ4_1 {
  uint16_t d;           // fp16 scale
  uint16_t m;           // fp16 minimum
  uint8_t qs[kQK / 2];  // 4-bit quants
};

// Q8_0: w = q * d.
struct BlockQ8_0 {
  uint16_t d;       // fp16 scale
  int8_t qs[kQK];   // 8-bit quants
};

// Q5_0: w = (q - 16) * d, q = nibble | (bit j of qh) << 4; nibbles laid out as in Q4_0, bit j of
// the little-endian u32 qh is the fifth bit of weight j.
struct BlockQ5_0 {
  uint16_t d;           // fp16 scale
  uint8_t qh[4];        // fifth bits, weight j at bit j
  uint8_t qs[kQK / 2];  // low 4 bits
};

// Q5_1: w = q * d + m, q as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;           // fp16 scale
  uint16_t m;           // fp16 minimum
  uint8_t qh[4];        // fifth bits
  uint8_t qs[kQK / 2];  // low 4 bits
};

constexpr int kQK_K = 256;  // weights per super-block of the K-quants
constexpr int kKScaleBytes = 12;  // 8 six-bit scales and 8 six-bit mins, packed

// Q4_K: 8 sub-blocks of 32; w = d * sc[i] * q - dmin * mn[i]. Sub-blocks 0..3 take the low six
// bits of scales[i] (scale) and scales[i + 4] (min); sub-blocks 4..7 take the nibbles of
// scales[i + 4] (scale low, min high) and, as their top two bits, the top two bits of
// scales[i - 4] (scale) and scales[i] (min). Each 64-weight chunk c reads 32 bytes of qs: low
// nibbles are sub-block 2c, high nibbles sub-block 2c + 1.
struct BlockQ4_K {
  uint16_t d;                     // fp16 super-block scale of the scales
  uint16_t dmin;                  // fp16 super-block scale of the mins
  uint8_t scales[kKScaleBytes];   // packed 6-bit scales and mins
  uint8_t qs[kQK_K / 2];          // 4-bit quants
};

// Q5_K: as Q4_K, plus a fifth bit: bit i of qh[l] belongs to weight l of sub-block i.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];   // fifth bits
  uint8_t qs[kQK_K / 2];   // low 4 bits
};

// Q6_K: 16 sub-blocks of 16; w = d * scales[i] * (q - 32), q six bits. In each 128-weight half
// h, quarter k (32 weights, l = 0..31) takes the low nibble (k < 2) or high nibble (k >= 2) of
// ql[64h + 32(k % 2) + l] and bits 2k..2k+1 of qh[32h + l].
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];      // low 4 bits
  uint8_t qh[kQK_K / 4];      // high 2 bits
  int8_t scales[kQK_K / 16];  // sub-block scales
  uint16_t d;                 // fp16 super-block scale
};

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block: fp16 d + 16 bytes of nibbles");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block: fp16 d, fp16 m + 16 bytes of nibbles");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block: fp16 d + 32 int8");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block: fp16 d, 4 bytes of high bits, 16 of nibbles");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block: fp16 d, fp16 m, 4 + 16 bytes");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block: fp16 d, dmin, 12 scale bytes, 128 nibbles");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block: Q4_K's fields plus 32 bytes of high bits");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block: 128 + 64 quant bytes, 16 scales, fp16 d");
static_assert(offsetof(BlockQ5_0, qs) == 6 && offsetof(BlockQ5_1, qs) == 8 &&
                  offsetof(BlockQ4_K, qs) == 16 && offsetof(BlockQ5_K, qh) == 16 &&
                  offsetof(BlockQ5_K, qs) == 48 && offsetof(BlockQ6_K, scales) == 192 &&
                  offsetof(BlockQ6_K, d) == 208,
              "the fields sit where the file format puts them, with no padding");
static_assert(offsetof(BlockQ4_0, qs) == 2 && offsetof(BlockQ4_1, qs) == 4 &&
                  offsetof(BlockQ8_0, qs) == 2,
              "quants follow the block's fp16 header with no padding");

// Bytes of a block, and the offset of its quants, as int64 for address arithmetic.
template <typename Block>
constexpr int64_t kBlockBytes = static_cast<int64_t>(sizeof(Block));
template <typename Block>
constexpr int64_t kQuantsAt = static_cast<int64_t>(offsetof(Block, qs));

}  // namespace pyllm
