#pragma once

namespace pyllm {
// Number of usable CUDA devices (0 without a GPU or driver). Only in a CUDA build.
int cuda_device_count();
}  // namespace pyllm
