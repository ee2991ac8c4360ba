// CUDA emulator stand-in for <cuda_bf16.h> (see emu/device.h).
#pragma once
#include "emu/device.h"
#include "emu/half.h"
