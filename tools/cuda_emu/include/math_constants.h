// CUDA emulator stand-in for <math_constants.h>: the constants csrc uses.
#pragma once
#include <cmath>
#define CUDART_INF_F HUGE_VALF
#define CUDART_INF HUGE_VAL
#define CUDART_NAN_F NAN
