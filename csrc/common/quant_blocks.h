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

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block: fp16 d + 16 bytes of nibbles");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block: fp16 d, fp16 m + 16 bytes of nibbles");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block: fp16 d + 32 int8");
static_assert(offsetof(BlockQ4_0, qs) == 2 && offsetof(BlockQ4_1, qs) == 4 &&
                  offsetof(BlockQ8_0, qs) == 2,
              "quants follow the block's fp16 header with no padding");

// Bytes of a block, and the offset of its quants, as int64 for address arithmetic.
template <typename Block>
constexpr int64_t kBlockBytes = static_cast<int64_t>(sizeof(Block));
template <typename Block>
constexpr int64_t kQuantsAt = static_cast<int64_t>(offsetof(Block, qs));

}  // namespace pyllm
