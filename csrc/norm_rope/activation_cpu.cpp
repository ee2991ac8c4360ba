// SiLU*mul (SwiGLU) and GELU (tanh approximation). silu_mul's float32 loop comes from
// row_kernels() (baseline / AVX2 / AVX-512 by cpu_isa()).
#include <algorithm>
#include <cmath>

#include "norm_rope/norm_rope.h"
#include "norm_rope/row_kernels.h"
#include "norm_rope/rows.h"

namespace pyllm {

using namespace norm_rope;

void silu_mul_cpu(const TensorView& x, const TensorView& out) {
  const int64_t width = out.size(-1);  // F; x rows are 2F wide
  const int64_t rows = width ? out.numel() / width : 0;
  const RowKernels& kern = row_kernels();
#pragma omp parallel if (worth_threads(rows, 2 * width))
  {
    RowIn gin, uin;
    RowOut o;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* gate = gin.load(x, r * 2 * width, width);
      const float* up = uin.load(x, r * 2 * width + width, width);
      float* orow = o.begin(out, r * width, width);
      kern.silu_mul(gate, up, orow, width);
      o.commit(out, r * width, width);
    }
  }
}

void gelu_tanh_cpu(const TensorView& x, const TensorView& out) {
  constexpr int64_t kChunk = 4096;
  const int64_t n = x.numel();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
  const float k1 = 0.044715f;
#pragma omp parallel if (chunks > 1 && n >= 32768)
  {
    RowIn in;
    RowOut o;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t off = c * kChunk, len = std::min(kChunk, n - off);
      const float* v = in.load(x, off, len);
      float* y = o.begin(out, off, len);
      for (int64_t j = 0; j < len; ++j) {
        const float a = v[j];
        y[j] = 0.5f * a * (1.0f + std::tanh(k0 * (a + k1 * a * a * a)));
      }
      o.commit(out, off, len);
    }
  }
}

}  // namespace pyllm
