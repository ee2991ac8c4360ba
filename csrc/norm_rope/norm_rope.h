// Small fused ops: RMSNorm (+ residual add), LayerNorm, RoPE, SiLU*mul, GELU(tanh).
// Inputs are row-major contiguous [rows, hidden] views (checked in pyllm/ops).
#pragma once

#include "common/tensor_view.h"

namespace pyllm {

// out = x / rms(x) * weight, row by row.
void rms_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView& out, float eps);
// residual_out = x + residual; out = rms_norm(residual_out) * weight.
void fused_add_rms_norm_cpu(const TensorView& x, const TensorView& residual, const TensorView& weight,
                            const TensorView& out, const TensorView& residual_out, float eps);

}  // namespace pyllm
