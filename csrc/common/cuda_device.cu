// Whether a CUDA device is usable, asked of the statically linked runtime. On a machine with
// no GPU or no driver this returns 0 instead of failing, so a CUDA build still runs on the CPU.
#include <cuda_runtime.h>

#include "common/cuda_device.h"

namespace pyllm {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  return count;
}

}  // namespace pyllm
