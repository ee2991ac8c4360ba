// The opt-in int8-activation path of qlinear: Q4_0, Q4_1, Q8_0 (this file's kernels) and Q5_0,
// Q5_1, Q4_K, Q5_K, Q6_K (qlinear_int8_superblock_avx2.cpp states their sums).
//
// Each activation row is quantized per 32-element block, as llama.cpp's Q8 activations are:
//   inv = 127 / max|x_b|,  q_k = round_half_even(x_k * inv),  scale_b = max|x_b| / 127
// (all float32; a block of zeros has scale 0 and codes 0). The weight codes then meet the
// activation codes in exact int32 dot products (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw), and
// each block's integer sum is scaled once:
//   Q4_0: out += scale_b * d * (sum q_w q_x - 8 * sum q_x)
//   Q4_1: out += scale_b * d * (sum q_w q_x) + m * (scale_b * sum q_x)
//   Q8_0: out += scale_b * d * (sum q_w q_x)
// i.e. the dequantized weight against the dequantized activations, x_hat = scale * q. So the error
// against the exact path is the activations' rounding (|x - x_hat| <= scale/2) meeting the whole
// weight, nothing else: the integer part is exact and the rest is float32 rounding.
// (Q4_1's offset m deliberately meets x_hat, not the exact block sum: the weight d*q + m is
// smaller than its d*q part wherever m offsets it, so rounding errors meeting the whole weight
// are smaller: measured on SmolLM2, mean |delta logit| 0.15 this way against 0.31 with the
// exact sum.)
// pyllm.ops.qlinear.qlinear_int8_ref computes the same thing in float64 (the tests' reference).
#pragma once

#include <cstdint>

#include "quant/qlinear.h"

namespace pyllm {

// One call's quantized activations: T rows of K codes, K / 32 blocks a row.
struct Int8Acts {
  const int8_t* q = nullptr;    // [T, K] codes
  const float* scale = nullptr; // [T, K/32]
  const int32_t* qsum = nullptr;  // [T, K/32] sum of the codes over the block
  const float* xsum = nullptr;    // [T, K/32] scale * qsum (Q4_1's offset term), made once per call
  int64_t K = 0, blocks = 0;
};

// The types the int8 path takes; on AVX-512 the runner prepacks all of their matrices.
bool qlinear_int8_supported(int qtype);

// The fewest tokens for which the int8 kernels beat the exact ones (measured on Zen 4, 2 threads,
// SmolLM2 shapes: Q4_1 3072x576 is even at T=1 and 1.9x faster at T=4; the Q8_0 49152x576 head
// is 6x slower at T=1, even near T=8 and 1.45x faster at T=16, its panel gathers being dearer).
// The model's runner uses them below these counts only on the exact path.
int64_t qlinear_int8_min_tokens(int qtype);

// Whether the runner's int8 mode takes the int8 kernel for a step of T tokens. The Q4_0/Q4_1/Q8_0
// kernels pay from qlinear_int8_min_tokens (from one token with prepacked panels). The Q5_0/Q5_1/
// K-quant kernels pay from one token; on AVX2 CPUs (no VNNI panels) only below kPackedMinTokens,
// where the exact GEMM takes over (SmolLM2's 576x1536 Q4_K on one Zen 4 core: the AVX2 row
// kernel 1.3x faster than exact at T=1, 1.8x slower at T=64).
bool qlinear_int8_pays(int qtype, int64_t T, bool packed);

// Quantize rows [t0, t1) of x (row stride ldx) into the buffers of `acts` (row r at r * K,
// blocks at r * K / 32). The baseline and AVX-512 forms give the same bytes.
void quantize_acts_baseline(const float* x, int64_t ldx, int64_t t0, int64_t t1, const Int8Acts& acts);
void quantize_acts_avx512(const float* x, int64_t ldx, int64_t t0, int64_t t1, const Int8Acts& acts);

using QLinearInt8TileFn = void (*)(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                   int64_t n1);
void qlinear_int8_tile_baseline(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                int64_t n1);
void qlinear_int8_tile_avx2(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                            int64_t n1);
void qlinear_int8_tile_avx512(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                              int64_t n1);

// The qlinear_superblock_qtype types: AVX-512 VNNI on prepacked panels (unpacked calls go to the
// AVX2 row kernel), AVX2 rows, and portable.
void qlinear_int8_tile_superblock_avx512(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1,
                                         int64_t n0, int64_t n1);
// Q5_0/Q5_1/K-quant matrices prepacked for the AVX-512 superblock kernel (QLinearArgs::packed):
// about as many bytes as the GGUF blocks (layouts in qlinear_int8_superblock_avx512.cpp).
int64_t qlinear_int8_superblock_packed_bytes(int qtype, int64_t N, int64_t K);
void qlinear_int8_pack_superblock_avx512(const QLinearArgs& a, uint8_t* dst);
void qlinear_int8_tile_superblock_avx2(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                       int64_t n1);
void qlinear_int8_tile_superblock_baseline(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1,
                                           int64_t n0, int64_t n1);

// Ahead-of-time panels for the AVX-512 kernel (QLinearArgs::packed): the whole matrix a.w [N, K]
// packed into dst (qlinear_int8_packed_bytes, 64-byte aligned). Only the AVX-512 kernel reads them.
int64_t qlinear_int8_packed_bytes(int qtype, int64_t N, int64_t K);
void qlinear_int8_pack_avx512(const QLinearArgs& a, uint8_t* dst);

}  // namespace pyllm
