// The fused sampler: per-row penalties, logit bias, top-k, typical-p, top-p, min-p, temperature
// and a Philox draw over logits [B, V]. pyllm/ops/sampling.py documents the exact semantics and
// checks every argument before these entries run.
#pragma once

#include <cstdint>

#include "common/tensor_view.h"

namespace pyllm {

// logits [B, V] f32; fparams [B, 7] f32 and iparams [B, 3] i64 (columns in sample_math.h);
// recent_ids [B, N] i64 (-1 = padding); bias_rows / bias_ids [K] i64, bias_values [K] f32;
// token_mask [B, W] i32: W = 0 (no mask) or W = ceil(V / 32), token i of row b allowed when bit
// i % 32 of word i / 32 is set; a disallowed token's logit is -inf before everything else;
// outputs token_ids [B] i64, logprobs [B] f32, top_ids [B, n] i64, top_logprobs [B, n] f32,
// probs [B] f32 (the chosen token's probability under the filtered, tempered distribution).
void sample_tokens_cpu(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                       const TensorView& recent_ids, const TensorView& bias_rows,
                       const TensorView& bias_ids, const TensorView& bias_values,
                       const TensorView& token_mask, const TensorView& token_ids,
                       const TensorView& logprobs, const TensorView& top_ids,
                       const TensorView& top_logprobs, const TensorView& probs);

// Greedy rows only: what sample_tokens_cpu returns for rows with temperature 0, no penalties, no
// logit bias, typical_p 1 and no top-n log-probs (top_k, top_p and min_p never remove the best
// token), without the filter machinery: token_ids [B] i64 (the first id of the largest non-NaN
// logit; 0 for a row without one), logprobs [B] f32 (bit-identical to sample_tokens_cpu's),
// probs [B] f32 (1, or 0 for a row without a finite or +inf logit).
void greedy_tokens_cpu(const TensorView& logits, const TensorView& token_ids,
                       const TensorView& logprobs, const TensorView& probs);
// The same on raw pointers (contiguous logits [B, V], outputs [B]) for the decode hot path, whose
// caller built every tensor itself: no TensorView to construct per step.
// `with_logprobs` false skips the log-softmax normalizer (most of the work: a float64 exp per
// logit) and writes NaN log-probs, for callers that will not read them.
void greedy_tokens(const float* logits, int64_t B, int64_t V, int64_t* token_ids, float* logprobs,
                   float* probs, bool with_logprobs);

#ifdef PYLLM_WITH_CUDA
// Same contract on device memory; `workspace` is float64 [B, W] scratch with W >= 2 V; runs on
// `stream`.
void sample_tokens_cuda(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                        const TensorView& recent_ids, const TensorView& bias_rows,
                        const TensorView& bias_ids, const TensorView& bias_values,
                        const TensorView& token_mask, const TensorView& workspace,
                        const TensorView& token_ids,
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
  double (*exp_sum)(const float*, int64_t, double);
  int64_t (*first_with_key)(const float*, int64_t, uint32_t);
};
const VecKernels& vec_kernels_baseline();
const VecKernels& vec_kernels_avx2();
// The set cpu_isa() selects (AVX2 also serves AVX-512 CPUs: on Zen 4, the machine these passes
// were measured on, 512-bit float64 math runs at the AVX2 rate).
const VecKernels& cpu_vec_kernels();

}  // namespace sampling
}  // namespace pyllm
