// Quantized linear: out[T, N] = x[T, K] (float32) @ dequant(W[N, K]).T + bias, computed on the
// GGUF blocks. Each block is dequantized in registers and multiplied with float32 activations;
// the weight is never expanded to float32 in memory.
//
// Dequantized weights are bit-identical to the reference's (q*d, (q-8)*d and q*d+m are exact
// products / single roundings in float32), so the kernels differ from `x @ dequant(W).T` only in
// the order of float32 additions.
#pragma once

#include <cstdint>

#include "common/quant_blocks.h"
#include "common/tensor_view.h"

namespace pyllm {

// GGML type ids (the `qtype` argument).
enum QType : int {
  kQF32 = 0,
  kQF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQBF16 = 30
};

constexpr int kQBlock = kQK;  // weights per block (float types are walked in the same chunks)

// Header-only (shared by the CPU and CUDA kernels); static so that no copy built for one ISA is
// shared with code built for another (tests/test_isa_isolation.py).

// Bytes of one 32-weight chunk of a row.
static inline int64_t qchunk_bytes(int qtype) {
  switch (qtype) {
    case kQ4_0: return kBlockBytes<BlockQ4_0>;
    case kQ4_1: return kBlockBytes<BlockQ4_1>;
    case kQ8_0: return kBlockBytes<BlockQ8_0>;
    case kQF16: case kQBF16: return 64;
    default: return 128;
  }
}

static inline bool qlinear_qtype_known(int qtype) {
  return qtype == kQF32 || qtype == kQF16 || qtype == kQBF16 || qtype == kQ4_0 || qtype == kQ4_1 ||
         qtype == kQ8_0;
}

// The block types outside the 32-weight kernel families above: Q5_0, Q5_1 and the K-quants. On
// the CPU they have kernels of their own (qlinear_superblock_avx2.cpp and _avx512.cpp, the
// portable qlinear_superblock.cpp without AVX2; the int8 path in qlinear_int8_superblock_avx2.cpp
// and qlinear_int8_cpu.cpp); on CUDA a plain exact kernel (qlinear_superblock.cu).
static inline bool qlinear_superblock_qtype(int qtype) {
  return qtype == kQ5_0 || qtype == kQ5_1 || qtype == kQ4_K || qtype == kQ5_K || qtype == kQ6_K;
}

// Weights and bytes of one block of a superblock type.
static constexpr int superblock_weights(int qtype) { return qtype == kQ5_0 || qtype == kQ5_1 ? kQK : kQK_K; }
static constexpr int64_t superblock_bytes(int qtype) {
  switch (qtype) {
    case kQ5_0: return kBlockBytes<BlockQ5_0>;
    case kQ5_1: return kBlockBytes<BlockQ5_1>;
    case kQ4_K: return kBlockBytes<BlockQ4_K>;
    case kQ5_K: return kBlockBytes<BlockQ5_K>;
    default: return kBlockBytes<BlockQ6_K>;
  }
}

// Bytes of one weight row of `k` elements (k a whole number of blocks for the block types).
static inline int64_t qlinear_row_bytes(int qtype, int64_t k) {
  if (qlinear_superblock_qtype(qtype)) return k / superblock_weights(qtype) * superblock_bytes(qtype);
  switch (qtype) {
    case kQ4_0: case kQ4_1: case kQ8_0: return k / kQBlock * qchunk_bytes(qtype);
    case kQF16: case kQBF16: return k * 2;
    default: return k * 4;
  }
}

struct QLinearArgs {
  const float* x = nullptr;   // [T, K], row stride ldx floats
  const uint8_t* w = nullptr; // [N] rows of ldw bytes
  const float* bias = nullptr;  // [N] or null
  float* out = nullptr;       // [T, N], row stride ldo floats
  int64_t ldx = 0, ldw = 0, ldo = 0;
  int64_t T = 0, K = 0, N = 0;
  int qtype = kQF32;
  // Opt in to the int8-activation kernels (qlinear_int8.h) for Q4_0 / Q4_1 / Q8_0 weights; other
  // types, and shapes those kernels do not take, stay on the exact path.
  bool int8_act = false;
  // With int8_act on an AVX-512 CPU: the matrix's panels packed ahead (qlinear_int8_pack_avx512),
  // or null to pack them per call.
  const uint8_t* packed = nullptr;
};

// One ISA's kernel: computes out[t0:t1, n0:n1] (single-threaded; the driver splits the work).
using QLinearTileFn = void (*)(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void qlinear_tile_baseline(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void qlinear_tile_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void qlinear_tile_avx512(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
// Portable, for the qlinear_superblock_qtype types on every CPU.
void qlinear_tile_superblock(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);

// Below this many tokens the kernels decode weights straight into registers (GEMV and small
// register tiles); from it on they dequantize panels and run a GEMM micro-kernel.
constexpr int64_t kPackedMinTokens = 10;

// AVX2 pieces the AVX-512 kernel reuses (defined in qlinear_avx2.cpp): the few-token path, which
// is memory-bound and tuned for AVX2, and the panel packer (rows [n, n + rows), rows <= 16,
// weights [k0, k0 + klen), k0 % 32 == 0, dequantized into buf[k * ldb + r]; missing rows zero).
void qlinear_small_t_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void qlinear_pack_panel_avx2(const QLinearArgs& a, int64_t n, int rows, int64_t k0, int64_t klen, float* buf,
                             int64_t ldb);

// The AVX2 GEMM over dequantized panels (the many-token path of qlinear_avx2.cpp), with the panel
// packer a parameter, so block formats with kernels of their own (qlinear_superblock_avx2.cpp)
// reuse its micro-kernel. pack fills panels of kPanelRows = 16 rows x up to 768 k (k0 a multiple
// of 768) as qlinear_pack_panel_avx2 does.
using PanelPackFn = void (*)(const QLinearArgs& a, int64_t n, int rows, int64_t k0, int64_t klen, float* buf,
                             int64_t ldb);
void qlinear_gemm_panels_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1,
                              PanelPackFn pack);
// The qlinear_superblock_qtype types with AVX2 (qlinear_superblock_avx2.cpp), and AVX-512's
// one-token path (qlinear_superblock_avx512.cpp; other steps go to the AVX2 kernel).
void qlinear_tile_superblock_avx512(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
void qlinear_tile_superblock_avx2(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1);
// One block of a qlinear_superblock_qtype type decoded into float32 as the reference decodes it
// (portable; qlinear_superblock.cpp): the int8 baseline and the runner's embedding rows use it.
void superblock_decode(int qtype, const uint8_t* block, float* out);

// The driver: picks the kernel for cpu_isa() and splits rows/tokens over the OpenMP threads.
void qlinear_run(const QLinearArgs& a);

// Entry points bound to Python. Shapes were checked in pyllm/ops/qlinear.py; these re-check the
// few facts a kernel relies on to stay in bounds.
// prepack (with int8_act on an AVX-512 CPU): run on panels packed for this call, as the model's
// runner packs them once.
void qlinear_cpu(const TensorView& x, const TensorView& w, int qtype, const TensorView* bias,
                 const TensorView& out, bool int8_act = false, bool prepack = false);
// Raw-pointer form for the decode hot path (contiguous x [T, K], w [N, row_bytes], out [T, N];
// bias may be 0); the caller has validated shapes once.
void qlinear_cpu_ptr(uintptr_t x, uintptr_t w, int qtype, uintptr_t bias, uintptr_t out, int64_t T,
                     int64_t K, int64_t N, bool int8_act = false);

// CUDA (only in a CUDA build; qlinear.cu): the same op on device tensors, launched on `stream`
// (a cudaStream_t passed as an integer). Weight rows must be 4-byte aligned.
void qlinear_cuda(const TensorView& x, const TensorView& w, int qtype, const TensorView* bias,
                  const TensorView& out, uintptr_t stream);
// The weight as float32: out [N, K] (contiguous) from w [N, row bytes] (any qtype), bit-identical
// to the reference's dequantization. For prefill with the tuned kernels, which multiplies it
// with cuBLAS (pyllm/ops/qlinear.py).
void dequantize_cuda(const TensorView& w, int qtype, const TensorView& out, uintptr_t stream);
// The qlinear_superblock_qtype types on CUDA (qlinear_superblock.cu; shapes checked by the two
// entries above): out [T, N] from contiguous x [T, K] and weight rows of ldw bytes, and the
// weight as float32 [N, K].
void qlinear_superblock_cuda(int qtype, const float* x, const uint8_t* w, const float* bias, float* out, int64_t T,
                             int64_t K, int64_t N, int64_t ldw, uintptr_t stream);
void dequantize_superblock_cuda(int qtype, const uint8_t* w, float* out, int64_t K, int64_t N, int64_t ldw,
                                uintptr_t stream);

}  // namespace pyllm
