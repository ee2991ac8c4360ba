// The qlinear driver (ISA choice, OpenMP split) and the portable baseline kernel.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "common/cpu_features.h"
#include "common/stall_guard.h"
#include "quant/qlinear.h"
#include "quant/qlinear_blocks.h"
#include "quant/qlinear_int8.h"

namespace pyllm {

// ------------------------------------------------------------------ baseline

namespace {
constexpr int kBaseTokens = 4;  // tokens per pass over a row's blocks
}

void qlinear_tile_baseline(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  const int64_t chunks = a.K / kQBlock;
  const int64_t cbytes = qchunk_bytes(a.qtype);
  const bool is_float = a.qtype == kQF32 || a.qtype == kQF16 || a.qtype == kQBF16;
  float w[kQBlock];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.w + n * a.ldw;
    for (int64_t tb = t0; tb < t1; tb += kBaseTokens) {
      const int tt = static_cast<int>(std::min<int64_t>(kBaseTokens, t1 - tb));
      float acc[kBaseTokens][kQBlock] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        dequant_chunk(a.qtype, row + c * cbytes, w);
        for (int t = 0; t < tt; ++t) {
          const float* xp = a.x + (tb + t) * a.ldx + c * kQBlock;
          for (int i = 0; i < kQBlock; ++i) acc[t][i] += w[i] * xp[i];
        }
      }
      for (int t = 0; t < tt; ++t) {
        float s = 0.f;
        for (int i = 0; i < kQBlock; ++i) s += acc[t][i];
        if (is_float) {
          const float* xp = a.x + (tb + t) * a.ldx;
          for (int64_t k = chunks * kQBlock; k < a.K; ++k) s += float_row_elem(a.qtype, row, k) * xp[k];
        }
        if (a.bias) s += a.bias[n];
        a.out[(tb + t) * a.ldo + n] = s;
      }
    }
  }
}

// -------------------------------------------------------------------- driver

namespace {

QLinearTileFn pick_kernel() {
  switch (cpu_isa()) {
    case Isa::Avx512: return qlinear_tile_avx512;
    case Isa::Avx2: return qlinear_tile_avx2;
    default: return qlinear_tile_baseline;
  }
}

}  // namespace

namespace {

// PYLLM_QLINEAR_ADAPTIVE=0 turns the stall fallback off (see common/stall_guard.h).
StallGuard& stall_guard() {
  static StallGuard guard("PYLLM_QLINEAR_ADAPTIVE");
  return guard;
}

}  // namespace

namespace {

// Runs tile(t0, t1, n0, n1) over the work, split across the OpenMP threads: each thread streams a
// contiguous range of weight rows (chunks rounded to `row_align` so the vector kernels' row tiles
// stay whole); when there are too few rows to share, the tokens are split instead.
template <typename Tile>
void run_split(const QLinearArgs& a, int64_t row_align, const Tile& tile) {
  // Below ~64k multiply-adds a parallel region costs more than it saves.
  const double work = static_cast<double>(a.T) * static_cast<double>(a.N) * static_cast<double>(a.K);
  int threads = work < 65536.0 ? 1 : std::max(1, omp_get_max_threads());
  StallGuard& guard = stall_guard();
  if (threads > 1 && guard.solo()) threads = 1;
  if (threads == 1) {
    tile(int64_t{0}, a.T, int64_t{0}, a.N);
    return;
  }
  int row_parts = threads, tok_parts = 1;
  if (a.N < 16 * threads && a.T >= 2 * threads) {
    row_parts = 1;
    tok_parts = threads;
  }
  const int64_t row_chunk = ((a.N + row_parts - 1) / row_parts + row_align - 1) / row_align * row_align;
  const int64_t tok_chunk = (a.T + tok_parts - 1) / tok_parts;
  const int tasks = row_parts * tok_parts;
  const double start = now_s();
  double master_begin = start, master_done = start;
#pragma omp parallel num_threads(threads)
  {
    if (omp_get_thread_num() == 0) master_begin = now_s();
#pragma omp for schedule(static) nowait
    for (int task = 0; task < tasks; ++task) {
      const int64_t n0 = std::min(a.N, (task % row_parts) * row_chunk);
      const int64_t n1 = std::min(a.N, n0 + row_chunk);
      const int64_t t0 = std::min(a.T, (task / row_parts) * tok_chunk);
      const int64_t t1 = std::min(a.T, t0 + tok_chunk);
      if (n0 < n1 && t0 < t1) tile(t0, t1, n0, n1);
    }
    if (omp_get_thread_num() == 0) master_done = now_s();
  }
  // The master may wait for the workers at the region's start (their previous region not yet
  // left) or at its end; everything but its own share of the work counts as waiting.
  const double end = now_s();
  const double own = master_done - master_begin;
  guard.record(own, (end - start) - own);
}

// The int8 kernels gather a panel's rows with 32-bit offsets (row * ldw for row < 16).
bool int8_path(const QLinearArgs& a) {
  return a.int8_act && qlinear_int8_supported(a.qtype) && a.K % kQBlock == 0 && a.K > 0 &&
         a.ldw <= (int64_t{1} << 26);
}

// Per-thread buffers of the quantized activations (grown to the largest call seen).
struct Int8Buffers {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> qsum;
  std::vector<float> xsum;
};

void run_int8(const QLinearArgs& a) {
  thread_local Int8Buffers buf;
  const int64_t blocks = a.K / kQBlock;
  const size_t codes = static_cast<size_t>(a.T * a.K), nb = static_cast<size_t>(a.T * blocks);
  if (buf.q.size() < codes) buf.q.resize(codes);
  if (buf.scale.size() < nb) {
    buf.scale.resize(nb);
    buf.qsum.resize(nb);
    buf.xsum.resize(nb);
  }
  Int8Acts acts;
  acts.q = buf.q.data();
  acts.scale = buf.scale.data();
  acts.qsum = buf.qsum.data();
  acts.xsum = buf.xsum.data();
  acts.K = a.K;
  acts.blocks = blocks;
  const Isa isa = cpu_isa();
  if (isa == Isa::Avx512) quantize_acts_avx512(a.x, a.ldx, 0, a.T, acts);
  else quantize_acts_baseline(a.x, a.ldx, 0, a.T, acts);
  QLinearInt8TileFn fn = isa == Isa::Avx512 ? qlinear_int8_tile_avx512
                         : isa == Isa::Avx2 ? qlinear_int8_tile_avx2
                                            : qlinear_int8_tile_baseline;
  if (qlinear_superblock_qtype(a.qtype))
    fn = isa == Isa::Avx512 ? qlinear_int8_tile_superblock_avx512
         : isa == Isa::Avx2 ? qlinear_int8_tile_superblock_avx2
                            : qlinear_int8_tile_superblock_baseline;
  QLinearArgs b = a;
  if (isa != Isa::Avx512) b.packed = nullptr;  // the panels are the AVX-512 kernels' layout
  run_split(b, 16, [&](int64_t t0, int64_t t1, int64_t n0, int64_t n1) { fn(b, acts, t0, t1, n0, n1); });
}

}  // namespace

void qlinear_run(const QLinearArgs& a) {
  if (a.T <= 0 || a.N <= 0) return;
  if (int8_path(a)) {
    run_int8(a);
    return;
  }
  QLinearTileFn fn = pick_kernel();
  if (qlinear_superblock_qtype(a.qtype))
    fn = cpu_isa() == Isa::Avx512 ? qlinear_tile_superblock_avx512
         : cpu_isa() == Isa::Avx2 ? qlinear_tile_superblock_avx2
                                  : qlinear_tile_superblock;
  run_split(a, 8, [&](int64_t t0, int64_t t1, int64_t n0, int64_t n1) { fn(a, t0, t1, n0, n1); });
}

void qlinear_cpu(const TensorView& x, const TensorView& w, int qtype, const TensorView* bias,
                 const TensorView& out, bool int8_act, bool prepack) {
  require(qlinear_qtype_known(qtype) || qlinear_superblock_qtype(qtype), "qlinear: unknown qtype");
  require(x.ndim == 2 && w.ndim == 2 && out.ndim == 2, "qlinear: x, weight, out must be 2-D");
  require(x.dtype == DType::F32 && out.dtype == DType::F32, "qlinear: x and out must be float32");
  require((x.numel() == 0 || x.is_contiguous()) && (w.numel() == 0 || w.is_contiguous()) &&
              (out.numel() == 0 || out.is_contiguous()),
          "qlinear: contiguous tensors");
  QLinearArgs a;
  a.T = x.shape[0];
  a.K = x.shape[1];
  a.N = w.shape[0];
  a.qtype = qtype;
  const bool blocks = qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ8_0;
  require(!blocks || a.K % kQBlock == 0, "qlinear: K must be a multiple of 32 for block types");
  require(!qlinear_superblock_qtype(qtype) || a.K % superblock_weights(qtype) == 0,
          "qlinear: K must be a whole number of blocks (32 for Q5_0/Q5_1, 256 for the K-quants)");
  const int64_t elem = w.dtype == DType::F32 ? 4 : (w.dtype == DType::U8 || w.dtype == DType::I8) ? 1 : 2;
  require(w.shape[1] * elem == qlinear_row_bytes(qtype, a.K), "qlinear: weight row bytes");
  require(out.shape[0] == a.T && out.shape[1] == a.N, "qlinear: out shape");
  if (bias) require(bias->ndim == 1 && bias->shape[0] == a.N && bias->dtype == DType::F32, "qlinear: bias");
  a.x = x.ptr<const float>();
  a.w = static_cast<const uint8_t*>(w.data);
  a.bias = bias ? bias->ptr<const float>() : nullptr;
  a.out = out.ptr<float>();
  a.ldx = a.K;
  a.ldw = qlinear_row_bytes(qtype, a.K);
  a.ldo = a.N;
  a.int8_act = int8_act;
  // The runner's prepacked AVX-512 panels, made here for this one call (tests reach the packed
  // kernels through this).
  std::unique_ptr<uint8_t, decltype(&std::free)> panels(nullptr, &std::free);
  if (prepack && int8_act && cpu_isa() == Isa::Avx512 && qlinear_int8_supported(qtype) && a.N > 0 && a.K > 0) {
    const int64_t bytes = (qlinear_int8_packed_bytes(qtype, a.N, a.K) + 63) / 64 * 64;
    panels.reset(static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes))));
    if (!panels) throw std::bad_alloc();
    qlinear_int8_pack_avx512(a, panels.get());
    a.packed = panels.get();
  }
  qlinear_run(a);
}

void qlinear_cpu_ptr(uintptr_t x, uintptr_t w, int qtype, uintptr_t bias, uintptr_t out, int64_t T,
                     int64_t K, int64_t N, bool int8_act) {
  require(qlinear_qtype_known(qtype) || qlinear_superblock_qtype(qtype), "qlinear: unknown qtype");
  require(T >= 0 && K >= 0 && N >= 0, "qlinear: negative size");
  require(!qlinear_superblock_qtype(qtype) || K % superblock_weights(qtype) == 0,
          "qlinear: K must be a whole number of blocks (32 for Q5_0/Q5_1, 256 for the K-quants)");
  require(!(qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ8_0) || K % kQBlock == 0,
          "qlinear: K must be a multiple of 32 for block types");
  QLinearArgs a;
  a.x = reinterpret_cast<const float*>(x);
  a.w = reinterpret_cast<const uint8_t*>(w);
  a.bias = reinterpret_cast<const float*>(bias);
  a.out = reinterpret_cast<float*>(out);
  a.T = T;
  a.K = K;
  a.N = N;
  a.qtype = qtype;
  a.ldx = K;
  a.ldw = qlinear_row_bytes(qtype, K);
  a.ldo = N;
  a.int8_act = int8_act;
  qlinear_run(a);
}

}  // namespace pyllm
