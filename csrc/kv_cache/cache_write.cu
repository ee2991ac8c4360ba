// Paged KV-cache write on the GPU: one block per token row, threads over its Hkv * D elements.
// Token rows may be strided (k and v as views of the fused QKV projection's output): each row's
// Hkv * D elements are contiguous, rows are k_stride / v_stride elements apart.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kv_cache/kv_cache.h"

namespace pyllm {

namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class Src, class Dst>
__global__ void write_kv_kernel(const Src* __restrict__ k, const Src* __restrict__ v, Dst* __restrict__ kc,
                                Dst* __restrict__ vc, const int64_t* __restrict__ slots, int64_t row,
                                int64_t k_stride, int64_t v_stride) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;  // padding
  const Src* ks = k + t * k_stride;
  const Src* vs = v + t * v_stride;
  Dst* kd = kc + slot * row;
  Dst* vd = vc + slot * row;
  for (int64_t i = threadIdx.x; i < row; i += blockDim.x) {
    kd[i] = from_f<Dst>(to_f(ks[i]));
    vd[i] = from_f<Dst>(to_f(vs[i]));
  }
}

template <class Src, class Dst>
void launch(const TensorView& k, const TensorView& v, const TensorView& kc, const TensorView& vc,
            const TensorView& slots, int64_t T, int64_t row, cudaStream_t stream) {
  const int threads = row >= 256 ? 256 : 128;
  write_kv_kernel<Src, Dst><<<static_cast<unsigned>(T), threads, 0, stream>>>(
      k.ptr<const Src>(), v.ptr<const Src>(), kc.ptr<Dst>(), vc.ptr<Dst>(), slots.ptr<const int64_t>(), row,
      k.stride[0], v.stride[0]);
}

template <class Src>
void launch_dst(const TensorView& k, const TensorView& v, const TensorView& kc, const TensorView& vc,
                const TensorView& slots, int64_t T, int64_t row, cudaStream_t stream) {
  switch (kc.dtype) {
    case DType::F16: launch<Src, __half>(k, v, kc, vc, slots, T, row, stream); break;
    case DType::BF16: launch<Src, __nv_bfloat16>(k, v, kc, vc, slots, T, row, stream); break;
    default: launch<Src, float>(k, v, kc, vc, slots, T, row, stream);
  }
}

}  // namespace

void write_kv_cache_cuda(const TensorView& k, const TensorView& v, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& slot_mapping, uintptr_t stream_handle) {
  require(k.ndim == 3 && v.ndim == 3 && k_cache.ndim == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              slot_mapping.is_contiguous(),
          "write_kv_cache_cuda: layout");
  const auto rows_dense = [](const TensorView& t) {  // each token row's Hkv * D elements contiguous
    return t.stride[2] == 1 && (t.shape[1] == 1 || t.stride[1] == t.shape[2]) && t.stride[0] >= 0;
  };
  require(rows_dense(k) && rows_dense(v) && v.shape[0] == k.shape[0] && v.shape[1] == k.shape[1] &&
              v.shape[2] == k.shape[2],
          "write_kv_cache_cuda: k and v rows must each be contiguous, of one shape");
  require(k.dtype == v.dtype && k_cache.dtype == v_cache.dtype && slot_mapping.dtype == DType::I64,
          "write_kv_cache_cuda: dtypes");
  const int64_t T = k.shape[0], row = k.shape[1] * k.shape[2];
  require(k_cache.shape[2] * k_cache.shape[3] == row && slot_mapping.numel() == T, "write_kv_cache_cuda: shapes");
  if (T == 0 || row == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (k.dtype) {
    case DType::F16: launch_dst<__half>(k, v, k_cache, v_cache, slot_mapping, T, row, stream); break;
    case DType::BF16: launch_dst<__nv_bfloat16>(k, v, k_cache, v_cache, slot_mapping, T, row, stream); break;
    default: launch_dst<float>(k, v, k_cache, v_cache, slot_mapping, T, row, stream);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("write_kv_cache_cuda: ") + cudaGetErrorString(err));
}

}  // namespace pyllm
