// Portable row kernels (baseline x86-64; the compiler may use SSE2) and the ISA choice.
#include <cmath>

#include "common/cpu_features.h"
#include "norm_rope/row_kernels.h"

namespace pyllm {
namespace norm_rope {

namespace {

double sumsq(const float* x, int64_t n) {
  double ss = 0.0;
  for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(x[j]) * x[j];
  return ss;
}

double add_sumsq(const float* a, const float* b, float* s, int64_t n) {
  double ss = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float v = a[j] + b[j];
    s[j] = v;
    ss += static_cast<double>(v) * v;
  }
  return ss;
}

void scale_mul(const float* x, float scale, const float* w, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * scale * w[j];
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
}

}  // namespace

const RowKernels& row_kernels_baseline() {
  static const RowKernels k{"baseline", sumsq, add_sumsq, scale_mul, silu_mul};
  return k;
}

const RowKernels& row_kernels() {
  switch (cpu_isa()) {
    case Isa::Avx512: return row_kernels_avx512();
    case Isa::Avx2: return row_kernels_avx2();
    default: return row_kernels_baseline();
  }
}

}  // namespace norm_rope
}  // namespace pyllm
