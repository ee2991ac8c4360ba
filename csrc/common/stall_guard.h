// One thread for a while after a stalled parallel region (shared by the qlinear and attention
// drivers, each with a guard of its own).
//
// When another process holds the other core, a thread woken for a parallel region can start a
// scheduler tick or more late (measured here: 8-16 ms a call, while the master spins at the
// closing barrier), against tens of µs for a decode kernel on one core. So a driver times how
// long its master waits beyond its own share of the work; after a region with such a stall the
// calls run on one thread for a while: 5 ms after a first stall, twice as long after each stall
// that follows (up to 2 s, so a lasting competitor costs one stalled region every 2 s), and back
// to 5 ms after a clean region. The window is time, not a count of calls: a count long enough to
// sit out a competitor under decode's µs-sized calls (it once grew to 65536 calls) kept a batch's
// ms-sized calls on one thread for many seconds after a single hiccup of the host. On an idle
// machine no region stalls and every large call is parallel.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace pyllm {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class StallGuard {
 public:
  static constexpr double kFirstWindow = 0.005, kMaxWindow = 2.0;  // seconds on one thread

  // `disable_env`: a variable that, set to "0", turns the guard off (null: always on).
  explicit StallGuard(const char* disable_env = nullptr) {
    if (disable_env)
      if (const char* v = std::getenv(disable_env)) enabled_ = std::string(v) != "0";
  }

  // Whether this call should run on one thread.
  bool solo() const { return solo_at(now_s()); }
  // After a parallel region: the master's own work and the rest of the region's wall time.
  void record(double own_s, double wait_s) { record_at(own_s, wait_s, now_s()); }

  // The same at a given time (seconds on now_s()'s clock), for tests.
  bool solo_at(double now) const { return enabled_ && now < solo_until_.load(std::memory_order_relaxed); }
  void record_at(double own_s, double wait_s, double now) {
    if (!enabled_) return;
    if (wait_s > 200e-6 && wait_s > 4.0 * own_s) {
      const double w = window_.load(std::memory_order_relaxed);
      solo_until_.store(now + w, std::memory_order_relaxed);
      window_.store(std::min(2.0 * w, kMaxWindow), std::memory_order_relaxed);
    } else {
      window_.store(kFirstWindow, std::memory_order_relaxed);
    }
  }

 private:
  std::atomic<double> solo_until_{0.0};
  std::atomic<double> window_{kFirstWindow};
  bool enabled_ = true;
};

}  // namespace pyllm
