// The float32 inner loops of the small fused ops, one implementation per instruction set:
// row_kernels_baseline.cpp (portable), row_kernels_avx2.cpp (AVX2 + FMA),
// row_kernels_avx512.cpp (AVX-512F). row_kernels() picks one by cpu_isa() at each call, so
// PYLLM_CPU_ISA / pyllm._C.set_cpu_isa take effect at once. Plain declarations only: the ISA
// files include nothing else of the project's, so no inline function is ever compiled with an
// instruction set the running CPU may lack.
#pragma once

#include <cstdint>

namespace pyllm {
namespace norm_rope {

struct RowKernels {
  const char* isa;
  // sum of x[j]^2
  double (*sumsq)(const float* x, int64_t n);
  // s = a + b; returns sum of s[j]^2
  double (*add_sumsq)(const float* a, const float* b, float* s, int64_t n);
  // out = x * scale * w
  void (*scale_mul)(const float* x, float scale, const float* w, float* out, int64_t n);
  // out = silu(gate) * up = gate / (1 + exp(-gate)) * up
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
};

const RowKernels& row_kernels_baseline();
const RowKernels& row_kernels_avx2();
const RowKernels& row_kernels_avx512();
const RowKernels& row_kernels();  // the one cpu_isa() selects now

}  // namespace norm_rope
}  // namespace pyllm
