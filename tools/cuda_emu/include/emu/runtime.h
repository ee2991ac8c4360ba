// The CUDA emulator's controls, for its Python module (module.cpp) and tests.
#pragma once

#include <cstdint>

namespace emu {

// The emulated device: what cudaDeviceGetAttribute and the occupancy query answer (an H100 by
// default), and the seed of the thread and block orders.
struct DeviceConfig {
  int sm_count = 132;
  int blocks_per_sm = 4;
  int optin_shared_bytes = 227 * 1024;
  uint64_t seed = 0;
};

struct Stats {
  uint64_t launches = 0, blocks = 0, switches = 0;
  uint64_t undefined_shuffle_reads = 0;  // shuffles that read a lane that had exited
  uint64_t errors = 0;
};

void configure(const DeviceConfig& config);
Stats take_stats();  // since the last call
void clear_error();

}  // namespace emu
