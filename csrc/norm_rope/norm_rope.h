// Small fused ops: RMSNorm (+ residual add), LayerNorm, RoPE, SiLU*mul, GELU(tanh).
// Views are row-major contiguous and were checked in pyllm/ops (shapes, dtypes, devices,
// positions within cos_sin); float tensors may be float32, float16 or bfloat16 independently,
// and every kernel computes in float32.
#pragma once

#include "common/tensor_view.h"

#ifdef PYLLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pyllm {

// out = x / rms(x) * weight, row by row over the last dim.
void rms_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView& out, float eps);
// residual_out = x + residual (rounded to its dtype); out = rms_norm(residual_out) * weight.
void fused_add_rms_norm_cpu(const TensorView& x, const TensorView& residual, const TensorView& weight,
                            const TensorView& out, const TensorView& residual_out, float eps);
// out = (x - mean) / sqrt(var + eps) * weight + bias (bias may be null).
void layer_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView* bias,
                    const TensorView& out, float eps);
// q [T, Hq, D], k [T, Hk, D], positions int64 [T], cos_sin float32 [max_pos, R] -> q_out, k_out.
void rope_cpu(const TensorView& q, const TensorView& k, const TensorView& positions,
              const TensorView& cos_sin, const TensorView& q_out, const TensorView& k_out, bool neox);
// x [rows, 2F] -> out [rows, F] = silu(x[:, :F]) * x[:, F:].
void silu_mul_cpu(const TensorView& x, const TensorView& out);
// out = gelu_tanh(x), elementwise.
void gelu_tanh_cpu(const TensorView& x, const TensorView& out);

#ifdef PYLLM_WITH_CUDA
// The same ops on the GPU, queued on `stream` (views are device pointers).
void rms_norm_cuda(const TensorView& x, const TensorView& weight, const TensorView& out, float eps,
                   cudaStream_t stream);
void fused_add_rms_norm_cuda(const TensorView& x, const TensorView& residual, const TensorView& weight,
                             const TensorView& out, const TensorView& residual_out, float eps,
                             cudaStream_t stream);
void layer_norm_cuda(const TensorView& x, const TensorView& weight, const TensorView* bias,
                     const TensorView& out, float eps, cudaStream_t stream);
void rope_cuda(const TensorView& q, const TensorView& k, const TensorView& positions,
               const TensorView& cos_sin, const TensorView& q_out, const TensorView& k_out, bool neox,
               cudaStream_t stream);
void silu_mul_cuda(const TensorView& x, const TensorView& out, cudaStream_t stream);
void gelu_tanh_cuda(const TensorView& x, const TensorView& out, cudaStream_t stream);
#endif

}  // namespace pyllm
