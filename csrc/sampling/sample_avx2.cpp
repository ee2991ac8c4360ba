// The sampler's vocabulary passes built with AVX2 + FMA (chosen at run time by cpu_isa()).
#define PYLLM_SAMPLING_ISA avx2
#include "sampling/sample_vec.h"
#include "sampling/sampling.h"

namespace pyllm {
namespace sampling {

const VecKernels& vec_kernels_avx2() {
  static const VecKernels k = {&avx2::exp_shifted, &avx2::exp_shifted_gather, &avx2::sum,
                               &avx2::max_key,     &avx2::max_key_gather,     &avx2::finite_ids,
                               &avx2::block_max_keys, &avx2::exp_sum, &avx2::first_with_key};
  return k;
}

}  // namespace sampling
}  // namespace pyllm
