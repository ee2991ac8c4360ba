// CUDA emulator stand-in for <cuda_runtime.h>: the device side (emu/device.h) and the runtime
// calls csrc makes, answered for an emulated device (runtime.cpp; emu::configure shapes it).
#pragma once

#include "emu/device.h"
#include "emu/half.h"

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
  cudaErrorLaunchOutOfResources = 701,
};
typedef cudaError_t cudaError;
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace emu {
cudaError_t get_last_error(bool clear);
const char* error_string(cudaError_t err);
int device_attribute(cudaDeviceAttr attr);
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
int blocks_per_sm(const void* kernel, int block_size, size_t dynamic_shared);
}  // namespace emu

inline cudaError_t cudaGetLastError() { return emu::get_last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return emu::get_last_error(false); }
inline const char* cudaGetErrorString(cudaError_t err) { return emu::error_string(err); }
inline cudaError_t cudaGetDevice(int* dev) { *dev = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  *value = emu::device_attribute(attr);
  return cudaSuccess;
}
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
template <class... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*kernel)(P...), int block_size,
                                                          size_t dynamic_shared) {
  *n = emu::blocks_per_sm(reinterpret_cast<const void*>(kernel), block_size, dynamic_shared);
  return cudaSuccess;
}
