// Portable row kernels (baseline x86-64; the compiler may use SSE2) and the ISA choice.
#include <cmath>

#include "common/cpu_features.h"
#include "norm_rope/row_kernels.h"

namespace pyllm {
namespace norm_rope {

namespace {

// Four partial sums: independent dependency chains, so the adds overlap (the compiler may not
// reassociate floating-point sums by itself).
double sumsq(const float* x, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += static_cast<double>(x[j]) * x[j];
    s1 += static_cast<double>(x[j + 1]) * x[j + 1];
    s2 += static_cast<double>(x[j + 2]) * x[j + 2];
    s3 += static_cast<double>(x[j + 3]) * x[j + 3];
  }
  for (; j < n; ++j) s0 += static_cast<double>(x[j]) * x[j];
  return (s0 + s1) + (s2 + s3);
}

double add_sumsq(const float* a, const float* b, float* s, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] = a[j] + b[j];
  return sumsq(s, n);
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
