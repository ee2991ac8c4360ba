// Which CUDA kernel family the ops launch: "general" (every shape; the kernels measured on an
// H100, see bench/compare_cuda_results.md) or "tuned" (decode-shaped fast paths: the warp-split
// attention of attention.cu for head dims 64/128, qlinear's GEMV with its loads issued ahead
// (bit-identical) and split-K tile for 9..128 tokens, and
// for prefill the weight dequantized for cuBLAS by pyllm/ops/qlinear.py; shapes they do not cover
// still take the general kernels). General until set: pyllm.ops sets it
// from the environment variable PYLLM_CUDA_KERNELS at import, and pyllm.ops.set_cuda_kernels
// changes it. A captured CUDA graph keeps the kernels it was captured with.
#pragma once

#include <atomic>
#include <stdexcept>
#include <string>

namespace pyllm {

enum class CudaKernels : int { General = 0, Tuned = 1 };

inline CudaKernels cuda_kernels_from_name(const std::string& name) {
  if (name == "general") return CudaKernels::General;
  if (name == "tuned") return CudaKernels::Tuned;
  throw std::invalid_argument("CUDA kernels: '" + name + "' is not one of general, tuned");
}

inline const char* cuda_kernels_name(CudaKernels k) { return k == CudaKernels::Tuned ? "tuned" : "general"; }

inline std::atomic<int>& cuda_kernels_setting() {
  static std::atomic<int> setting{static_cast<int>(CudaKernels::General)};
  return setting;
}

inline CudaKernels cuda_kernels() { return static_cast<CudaKernels>(cuda_kernels_setting().load()); }
inline void set_cuda_kernels(CudaKernels k) { cuda_kernels_setting().store(static_cast<int>(k)); }

}  // namespace pyllm
