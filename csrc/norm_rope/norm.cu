// RMSNorm (+ residual add) and LayerNorm on the GPU: one block per row, float32 sums.
#include "norm_rope/cuda_utils.cuh"
#include "norm_rope/norm_rope.h"

namespace pyllm {

using namespace norm_rope_cuda;

namespace {

__global__ void rms_norm_kernel(const void* x, int xd, const void* w, int wd, void* out, int od,
                                int64_t hidden, float eps) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    const float v = load(x, xd, base + j);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
    store(out, od, base + j, load(x, xd, base + j) * inv * load(w, wd, j));
}

// s = x + residual is stored (rounded to residual_out's dtype) and normalised as stored.
__global__ void fused_add_rms_norm_kernel(const void* x, int xd, const void* r, int rd, const void* w, int wd,
                                          void* out, int od, void* r_out, int rod, int64_t hidden, float eps) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    const float s = round_to(rod, load(x, xd, base + j) + load(r, rd, base + j));
    store(r_out, rod, base + j, s);
    ss += s * s;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)  // each thread rereads its own writes
    store(out, od, base + j, load(r_out, rod, base + j) * inv * load(w, wd, j));
}

__global__ void layer_norm_kernel(const void* x, int xd, const void* w, int wd, const void* b, int bd,
                                  void* out, int od, int64_t hidden, float eps) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  // Work relative to the row's first element: for a row far from zero, x - shift keeps the
  // digits a float32 mean would lose.
  const float shift = load(x, xd, base);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) sum += load(x, xd, base + j) - shift;
  const float mean = block_sum(sum) / static_cast<float>(hidden);  // of x - shift
  float var = 0.0f;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    const float d = (load(x, xd, base + j) - shift) - mean;
    var += d * d;
  }
  const float rstd = rsqrtf(block_sum(var) / static_cast<float>(hidden) + eps);
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
    float v = ((load(x, xd, base + j) - shift) - mean) * rstd * load(w, wd, j);
    if (b) v += load(b, bd, j);
    store(out, od, base + j, v);
  }
}

int64_t rows_of(const TensorView& x) {
  const int64_t hidden = x.size(-1);
  return hidden ? x.numel() / hidden : 0;
}

}  // namespace

void rms_norm_cuda(const TensorView& x, const TensorView& weight, const TensorView& out, float eps,
                   cudaStream_t stream) {
  const int64_t hidden = x.size(-1), rows = rows_of(x);
  if (rows == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), row_threads(hidden), 0, stream>>>(
      x.data, dtype_code(x), weight.data, dtype_code(weight), out.data, dtype_code(out), hidden, eps);
  check_launch("rms_norm");
}

void fused_add_rms_norm_cuda(const TensorView& x, const TensorView& residual, const TensorView& weight,
                             const TensorView& out, const TensorView& residual_out, float eps,
                             cudaStream_t stream) {
  const int64_t hidden = x.size(-1), rows = rows_of(x);
  if (rows == 0) return;
  fused_add_rms_norm_kernel<<<static_cast<unsigned>(rows), row_threads(hidden), 0, stream>>>(
      x.data, dtype_code(x), residual.data, dtype_code(residual), weight.data, dtype_code(weight),
      out.data, dtype_code(out), residual_out.data, dtype_code(residual_out), hidden, eps);
  check_launch("fused_add_rms_norm");
}

void layer_norm_cuda(const TensorView& x, const TensorView& weight, const TensorView* bias,
                     const TensorView& out, float eps, cudaStream_t stream) {
  const int64_t hidden = x.size(-1), rows = rows_of(x);
  if (rows == 0) return;
  layer_norm_kernel<<<static_cast<unsigned>(rows), row_threads(hidden), 0, stream>>>(
      x.data, dtype_code(x), weight.data, dtype_code(weight), bias ? bias->data : nullptr,
      bias ? dtype_code(*bias) : 0, out.data, dtype_code(out), hidden, eps);
  check_launch("layer_norm");
}

}  // namespace pyllm
