// CUDA emulator stand-in for <cuda_fp16.h> (see emu/device.h).
#pragma once
#include "emu/device.h"
#include "emu/half.h"
