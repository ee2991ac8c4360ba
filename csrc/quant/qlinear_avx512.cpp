// qlinear with AVX-512F: the many-token GEMM (prefill, batches), where the FMA width pays.
// Weight panels of 32 rows x up to 256 k are dequantized by the AVX2 packer into a k-major
// buffer (each k's 32 weights = two zmm), and a 12-token x 32-row micro-kernel (24 zmm
// accumulators; per k: two weight loads, twelve activation broadcasts, 24 FMAs) runs over every
// token. Few tokens (decode) are memory-bound and go to the AVX2 kernels, which are tuned for it.
// Compiled everywhere, run only where cpu_isa() reports AVX-512.
#include <immintrin.h>

#include <algorithm>

#include "quant/qlinear.h"

namespace pyllm {

namespace {

constexpr int kRows = 32, kPanelK = 256, kTokens = 12;

// out_tile[MT][32] = x[MT rows, ldx apart][0 .. klen) @ panel[klen][32]
template <int MT>
void micro(const float* x, int64_t ldx, int64_t klen, const float* panel, float* out_tile) {
  __m512 acc[MT][2];
  for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < klen; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + k * kRows);
    const __m512 b1 = _mm512_load_ps(panel + k * kRows + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MT; ++i) {
      const __m512 xa = _mm512_set1_ps(x[i * ldx + k]);
      acc[i][0] = _mm512_fmadd_ps(xa, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(xa, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    _mm512_storeu_ps(out_tile + i * kRows, acc[i][0]);
    _mm512_storeu_ps(out_tile + i * kRows + 16, acc[i][1]);
  }
}

template <int MT>
void micro_upto(int mt, const float* x, int64_t ldx, int64_t klen, const float* panel, float* out_tile) {
  if constexpr (MT > 1) {
    if (mt < MT) return micro_upto<MT - 1>(mt, x, ldx, klen, panel, out_tile);
  }
  micro<MT>(x, ldx, klen, panel, out_tile);
}

void gemm_packed(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  alignas(64) static thread_local float panel[kPanelK * kRows];
  alignas(64) float tile_out[kTokens * kRows];
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t n = n0; n < n1; ++n) a.out[t * a.ldo + n] = a.bias ? a.bias[n] : 0.f;
  for (int64_t k0 = 0; k0 < a.K; k0 += kPanelK) {
    const int64_t klen = std::min<int64_t>(kPanelK, a.K - k0);
    for (int64_t n = n0; n < n1; n += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
      // Two 16-row halves side by side; the second is all zeros when rows <= 16.
      qlinear_pack_panel_avx2(a, n, std::min(rows, 16), k0, klen, panel, kRows);
      qlinear_pack_panel_avx2(a, n + 16, std::max(rows - 16, 0), k0, klen, panel + 16, kRows);
      for (int64_t t = t0; t < t1; t += kTokens) {
        const int mt = static_cast<int>(std::min<int64_t>(kTokens, t1 - t));
        micro_upto<kTokens>(mt, a.x + t * a.ldx + k0, a.ldx, klen, panel, tile_out);
        for (int i = 0; i < mt; ++i) {
          float* o = a.out + (t + i) * a.ldo + n;
          const float* s = tile_out + i * kRows;
          for (int r = 0; r < rows; ++r) o[r] += s[r];
        }
      }
    }
  }
}

}  // namespace

void qlinear_tile_avx512(const QLinearArgs& a, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (t1 - t0 >= kPackedMinTokens) {
    gemm_packed(a, t0, t1, n0, n1);
  } else {
    qlinear_small_t_avx2(a, t0, t1, n0, n1);
  }
}

}  // namespace pyllm
