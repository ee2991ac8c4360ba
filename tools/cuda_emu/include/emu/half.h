// __half and __nv_bfloat16 for the CUDA emulator: storage types with the conversions the kernels
// use, rounding to nearest even as the CUDA intrinsics do. The arithmetic is csrc's own portable
// conversions (common/half.h), which the CPU kernels use.
#pragma once

#include <cstdint>

#include "common/half.h"

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
typedef __half half;

inline float __half2float(__half h) { return pyllm::fp16_to_float(h.bits); }
inline __half __float2half_rn(float f) { return {pyllm::float_to_fp16(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

inline float __bfloat162float(__nv_bfloat16 b) { return pyllm::bf16_to_float(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {pyllm::float_to_bf16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
