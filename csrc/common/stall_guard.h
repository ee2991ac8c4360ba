// One thread for a while after a stalled parallel region (shared by the qlinear and attention
// drivers, each with a guard of its own).
//
// When another process holds the other core, a thread woken for a parallel region can start a
// scheduler tick or more late (measured here: 8-16 ms a call, while the master spins at the
// closing barrier), against tens of µs for a decode kernel on one core. So a driver times how
// long its master waits beyond its own share of the work; after a region with such a stall the
// next calls run on one thread, for a window that doubles while the stalls go on (up to 65536
// calls) and resets after a clean region. On an idle machine no region stalls and every large
// call is parallel.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace pyllm {

class StallGuard {
 public:
  // `disable_env`: a variable that, set to "0", turns the guard off (null: always on).
  explicit StallGuard(const char* disable_env = nullptr) {
    if (disable_env)
      if (const char* v = std::getenv(disable_env)) enabled_ = std::string(v) != "0";
  }

  // Whether this call should run on one thread (counts the call against the window).
  bool solo() {
    if (!enabled_ || solo_left_.load(std::memory_order_relaxed) <= 0) return false;
    solo_left_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }

  // After a parallel region: the master's own work and the rest of the region's wall time.
  void record(double own_s, double wait_s) {
    if (!enabled_) return;
    if (wait_s > 200e-6 && wait_s > 4.0 * own_s) {
      const int64_t w = window_.load(std::memory_order_relaxed);
      solo_left_.store(w, std::memory_order_relaxed);
      window_.store(std::min<int64_t>(2 * w, int64_t{1} << 16), std::memory_order_relaxed);
    } else {
      window_.store(64, std::memory_order_relaxed);
    }
  }

 private:
  std::atomic<int64_t> solo_left_{0};
  std::atomic<int64_t> window_{64};
  bool enabled_ = true;
};

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace pyllm
