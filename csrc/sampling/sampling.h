// The fused sampler: per-row penalties, logit bias, top-k, typical-p, top-p, min-p, temperature
// and a Philox draw over logits [B, V]. pyllm/ops/sampling.py documents the exact semantics and
// checks every argument before these entries run.
#pragma once

#include <cstdint>

#include "common/tensor_view.h"

namespace pyllm {

// logits [B, V] f32; fparams [B, 7] f32 and iparams [B, 3] i64 (columns in sample_math.h);
// recent_ids [B, N] i64 (-1 = padding); bias_rows / bias_ids [K] i64, bias_values [K] f32;
// outputs token_ids [B] i64, logprobs [B] f32, top_ids [B, n] i64, top_logprobs [B, n] f32,
// probs [B] f32 (the chosen token's probability under the filtered, tempered distribution).
void sample_tokens_cpu(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                       const TensorView& recent_ids, const TensorView& bias_rows,
                       const TensorView& bias_ids, const TensorView& bias_values,
                       const TensorView& token_ids, const TensorView& logprobs,
                       const TensorView& top_ids, const TensorView& top_logprobs,
                       const TensorView& probs);

#ifdef PYLLM_WITH_CUDA
// Same contract on device memory; `workspace` is float64 [B, W] scratch with W >= 2 V; runs on
// `stream`.
void sample_tokens_cuda(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                        const TensorView& recent_ids, const TensorView& bias_rows,
                        const TensorView& bias_ids, const TensorView& bias_values,
                        const TensorView& workspace, const TensorView& token_ids,
                        const TensorView& logprobs, const TensorView& top_ids,
                        const TensorView& top_logprobs, const TensorView& probs, uintptr_t stream);
#endif

namespace sampling {

// The vocabulary passes, one set per instruction set (sample_vec.h).
struct VecKernels {
  void (*exp_shifted)(const float*, int64_t, double, double*);
  void (*exp_shifted_gather)(const float*, const int32_t*, int64_t, double, double*);
  double (*sum)(const double*, int64_t);
  uint32_t (*max_key)(const float*, int64_t);
  uint32_t (*max_key_gather)(const float*, const int32_t*, int64_t);
  int64_t (*finite_ids)(const float*, int64_t, int32_t*);
  void (*block_max_keys)(const float*, int64_t, int64_t, uint32_t*);
};
const VecKernels& vec_kernels_baseline();
const VecKernels& vec_kernels_avx2();

}  // namespace sampling
}  // namespace pyllm
