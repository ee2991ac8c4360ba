// The CUDA emulator's runtime: launches, the fiber scheduler that runs a block's threads, and the
// runtime calls csrc makes (see include/emu/device.h for what it checks and what it can't).
//
// A block's threads are fibers on the calling thread (switched by emu_switch_context below: the
// callee-saved registers and the stack pointer, no signal mask, so a switch costs nanoseconds
// where swapcontext makes a system call). The scheduler resumes every runnable fiber (in a
// shuffled order) until it blocks at a barrier, a shuffle or a vote, or exits; then it releases
// the warps whose every live lane waits at a warp barrier (exchanging shuffle values, counting
// votes), or else the block when every live thread waits at __syncthreads. Nothing releasable
// with threads still waiting is a deadlock, reported as a launch failure.
#include "emu/runtime.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// emu_switch_context(save, next): push the callee-saved registers, store the stack pointer in
// *save, switch to the stack `next` (saved the same way, or made by new_fiber_stack) and pop
// its registers. The System V ABI leaves every other register to the caller.
extern "C" void emu_switch_context(void** save, void* next);
asm(R"(
  .text
  .globl emu_switch_context
  .hidden emu_switch_context
  .type emu_switch_context,@function
emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_context,.-emu_switch_context
)");

namespace emu {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };
enum class WarpOp { Sync, Shuffle, Vote };  // __syncwarp; a shuffle; __ballot/__any/__all_sync

struct Thread {
  void* sp = nullptr;  // saved stack pointer while switched out
  uint3 idx;
  int linear = 0;
  State state = State::Runnable;
  const char* file = nullptr;  // the __syncthreads it waits at
  int line = 0;
  WarpOp op = WarpOp::Sync;  // what it waits for at a warp barrier
  uint64_t post = 0, result = 0;
  int src = 0;
  void* fake_stack = nullptr;  // ASan's, while switched out
};

Thread* g_thread = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

const uint3& thread_idx() { return g_thread->idx; }
int lane_id() { return g_thread->linear & 31; }

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr uint64_t kPoison = ~uint64_t{0};
constexpr int kDefaultSharedBytes = 48 * 1024;

struct Aligned16 {
  alignas(16) unsigned char bytes[16];
};

DeviceConfig g_device;
Stats g_stats;
cudaError_t g_error = cudaSuccess;  // sticky until cudaGetLastError
cudaError_t g_message_code = cudaSuccess;
std::string g_message;
std::vector<std::pair<const void*, int>> g_max_dynamic;  // kernel -> cudaFuncSetAttribute value
std::mt19937_64 g_rng;

// The launch running now.
void* g_scheduler_sp = nullptr;
const void* g_scheduler_stack = nullptr;
size_t g_scheduler_stack_size = 0;
std::vector<Thread> g_threads;
std::vector<std::unique_ptr<Aligned16[]>> g_stacks;
void (*g_body)(void*) = nullptr;
void* g_body_ctx = nullptr;
std::unique_ptr<Aligned16[]> g_dynamic;
size_t g_dynamic_bytes = 0;
std::vector<std::pair<void*, size_t>> g_static_shared;  // declared this launch
std::vector<void*> g_poisoned;                          // poisoned this block
bool g_abandoned = false;  // a deadlocked block left fibers mid-stack (ASan shadow to clear)

void fail(cudaError_t code, const std::string& why) {
  if (g_error == cudaSuccess) {  // the first error since cudaGetLastError is the one reported
    g_error = code;
    g_message_code = code;
    g_message = "CUDA emulator: " + why;
  }
  ++g_stats.errors;
}

std::string where(const Thread& t) {
  return "block (" + std::to_string(g_block_idx.x) + "," + std::to_string(g_block_idx.y) + "," +
         std::to_string(g_block_idx.z) + ") thread " + std::to_string(t.linear);
}

void* stack_of(size_t i) { return g_stacks[i].get(); }

// Fiber -> scheduler, and back when the scheduler resumes this fiber.
void yield(bool exiting = false) {
  Thread* t = g_thread;
  ++g_stats.switches;
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &t->fake_stack, g_scheduler_stack, g_scheduler_stack_size);
#endif
  emu_switch_context(&t->sp, g_scheduler_sp);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(t->fake_stack, nullptr, nullptr);
#endif
  (void)exiting;
}

[[noreturn]] void fiber_main() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_scheduler_stack, &g_scheduler_stack_size);
#endif
  g_body(g_body_ctx);
  g_thread->state = State::Done;
  yield(true);
  std::abort();  // a finished fiber is never resumed
}

// A fresh stack for fiber i whose first switch "returns" into fiber_main: six zero registers,
// then fiber_main's address, at a 16-byte aligned address, so that fiber_main starts with the
// stack pointer 8 past a 16-byte boundary, as after a call.
void* new_fiber_stack(void* stack, size_t bytes) {
  auto top = reinterpret_cast<uintptr_t>(stack) + bytes;
  top &= ~uintptr_t{15};
  auto* frame = reinterpret_cast<void**>(top - 64);
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[6] = reinterpret_cast<void*>(&fiber_main);
  frame[7] = nullptr;
  return frame;
}

void resume(Thread& t, size_t i) {
  g_thread = &t;
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack_of(i), kStackBytes);
#endif
  emu_switch_context(&g_scheduler_sp, t.sp);
#ifdef EMU_ASAN
  // Back on the scheduler's stack; its bounds were recorded when a fiber first started (the
  // bounds this call could report are the fiber's, which must not become the scheduler's).
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  (void)i;
  g_thread = nullptr;
}

// Releases the warps whose live lanes all wait at a warp barrier; true if any was released.
bool release_warps(int n) {
  bool released = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int w1 = std::min(n, w0 + 32);
    bool all = true, any = false;
    for (int i = w0; i < w1; ++i) {
      const State s = g_threads[i].state;
      if (s == State::AtWarpBarrier) any = true;
      else if (s != State::Done) all = false;
    }
    if (!all || !any) continue;
    const Thread* first = nullptr;
    uint64_t ballot = 0, active = 0;  // over the waiting lanes; exited lanes vote 0 and are inactive
    for (int i = w0; i < w1; ++i) {
      const Thread& t = g_threads[i];
      if (t.state != State::AtWarpBarrier) continue;
      if (!first) first = &t;
      if (t.op != first->op)
        fail(cudaErrorLaunchFailure, "divergence: lanes of warp " + std::to_string(w0 / 32) +
                                         " wait at different warp operations (" + where(t) + ")");
      active |= uint64_t{1} << (i - w0);
      if (t.post) ballot |= uint64_t{1} << (i - w0);
    }
    for (int i = w0; i < w1; ++i) {
      Thread& t = g_threads[i];
      if (t.state != State::AtWarpBarrier) continue;
      if (t.op == WarpOp::Vote) {
        t.result = ballot | (active << 32);
      } else if (t.op == WarpOp::Shuffle) {
        const int src = w0 + t.src;
        if (t.src >= 0 && t.src < 32 && src < w1 && g_threads[src].state == State::AtWarpBarrier) {
          t.result = g_threads[src].post;
        } else {
          t.result = kPoison;
          ++g_stats.undefined_shuffle_reads;
        }
      }
    }
    for (int i = w0; i < w1; ++i)  // after every lane has read: the sources' states matter above
      if (g_threads[i].state == State::AtWarpBarrier) g_threads[i].state = State::Runnable;
    released = true;
  }
  return released;
}

// Releases the block if every live thread waits at __syncthreads (the same one).
bool release_block(int n) {
  const Thread* first = nullptr;
  for (int i = 0; i < n; ++i) {
    const Thread& t = g_threads[i];
    if (t.state == State::Done) continue;
    if (t.state != State::AtBlockBarrier) return false;
    if (!first) {
      first = &t;
    } else if (t.line != first->line || std::string(t.file) != first->file) {
      fail(cudaErrorLaunchFailure, std::string("divergence: ") + where(*first) + " waits at __syncthreads at " +
                                       first->file + ":" + std::to_string(first->line) + " and " + where(t) + " at " +
                                       t.file + ":" + std::to_string(t.line));
    }
  }
  if (!first) return false;
  for (int i = 0; i < n; ++i)
    if (g_threads[i].state == State::AtBlockBarrier) g_threads[i].state = State::Runnable;
  return true;
}

std::string waiting_summary(int n) {
  int at_block = 0, at_warp = 0;
  for (int i = 0; i < n; ++i) {
    at_block += g_threads[i].state == State::AtBlockBarrier;
    at_warp += g_threads[i].state == State::AtWarpBarrier;
  }
  return std::to_string(at_block) + " threads at __syncthreads, " + std::to_string(at_warp) +
         " at a warp barrier or shuffle, the rest exited";
}

// Runs one block to the end; false after a deadlock (the launch stops there).
bool run_block(int n, std::vector<int>& order) {
  g_poisoned.clear();
  if (g_dynamic_bytes) std::memset(g_dynamic.get(), 0xFF, g_dynamic_bytes);
  const unsigned bx = g_block_dim.x, by = g_block_dim.y;
  for (int i = 0; i < n; ++i) {
    Thread& t = g_threads[i];
    t.idx = uint3{i % bx, (i / bx) % by, i / (bx * by)};
    t.linear = i;
    t.state = State::Runnable;
    t.fake_stack = nullptr;
    t.sp = new_fiber_stack(stack_of(i), kStackBytes);
  }
  int live = n;
  while (true) {
    std::shuffle(order.begin(), order.end(), g_rng);
    for (int i : order) {
      Thread& t = g_threads[i];
      if (t.state != State::Runnable) continue;
      resume(t, static_cast<size_t>(i));
      if (t.state == State::Done) --live;
    }
    if (live == 0) return true;
    if (release_warps(n) || release_block(n)) continue;
    fail(cudaErrorLaunchFailure, "deadlock in block (" + std::to_string(g_block_idx.x) + "," +
                                     std::to_string(g_block_idx.y) + "," + std::to_string(g_block_idx.z) +
                                     "): " + waiting_summary(n));
    g_abandoned = true;
    return false;
  }
}

int max_dynamic_for(const void* kernel) {
  for (const auto& [k, v] : g_max_dynamic)
    if (k == kernel) return v;
  return kDefaultSharedBytes;
}

}  // namespace

void run_kernel(const void* kernel, const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  ++g_stats.launches;
  const uint64_t threads = uint64_t{cfg.block.x} * cfg.block.y * cfg.block.z;
  if (threads == 0 || threads > 1024 || cfg.block.z > 64 || cfg.grid.x == 0 || cfg.grid.y == 0 ||
      cfg.grid.z == 0 || cfg.grid.x > 2147483647u || cfg.grid.y > 65535 || cfg.grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration,
         "invalid launch configuration: grid (" + std::to_string(cfg.grid.x) + "," + std::to_string(cfg.grid.y) +
             "," + std::to_string(cfg.grid.z) + "), block (" + std::to_string(cfg.block.x) + "," +
             std::to_string(cfg.block.y) + "," + std::to_string(cfg.block.z) + ")");
    return;
  }
  if (cfg.shared_bytes > static_cast<size_t>(max_dynamic_for(kernel))) {
    fail(cudaErrorInvalidValue, std::to_string(cfg.shared_bytes) +
                                    " bytes of dynamic shared memory, more than the kernel's limit of " +
                                    std::to_string(max_dynamic_for(kernel)) +
                                    " (cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raises it)");
    return;
  }
  const int n = static_cast<int>(threads);
  while (g_stacks.size() < static_cast<size_t>(n))
    g_stacks.push_back(std::make_unique<Aligned16[]>(kStackBytes / sizeof(Aligned16)));
#ifdef EMU_ASAN
  if (g_abandoned)  // their frames' redzones would read as overflows of the next fibers' frames
    for (auto& stack : g_stacks) ASAN_UNPOISON_MEMORY_REGION(stack.get(), kStackBytes);
#endif
  g_abandoned = false;
  g_threads.assign(static_cast<size_t>(n), Thread{});
  g_body = body;
  g_body_ctx = ctx;
  g_dynamic_bytes = cfg.shared_bytes;
  g_dynamic = std::make_unique<Aligned16[]>((cfg.shared_bytes + 15) / 16);
  g_static_shared.clear();
  g_block_dim = cfg.block;
  g_grid_dim = cfg.grid;

  std::vector<uint3> blocks;
  blocks.reserve(uint64_t{cfg.grid.x} * cfg.grid.y * cfg.grid.z);
  for (unsigned z = 0; z < cfg.grid.z; ++z)
    for (unsigned y = 0; y < cfg.grid.y; ++y)
      for (unsigned x = 0; x < cfg.grid.x; ++x) blocks.push_back(uint3{x, y, z});
  std::shuffle(blocks.begin(), blocks.end(), g_rng);
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[i] = i;
  for (const uint3& b : blocks) {
    g_block_idx = b;
    ++g_stats.blocks;
    if (!run_block(n, order)) break;
  }
  size_t static_bytes = 0;
  for (const auto& s : g_static_shared) static_bytes += s.second;
  if (static_bytes > static_cast<size_t>(kDefaultSharedBytes) ||
      static_bytes + cfg.shared_bytes > static_cast<size_t>(g_device.optin_shared_bytes))
    fail(cudaErrorInvalidValue, "the kernel uses " + std::to_string(static_bytes) + " bytes of static and " +
                                    std::to_string(cfg.shared_bytes) + " of dynamic shared memory, over the device's limits");
  g_threads.clear();
  g_dynamic.reset();
}

void block_barrier(const char* file, int line) {
  Thread* t = g_thread;
  t->state = State::AtBlockBarrier;
  t->file = file;
  t->line = line;
  yield();
}

void warp_barrier(unsigned mask) {
  if (mask != 0xffffffffu) fail(cudaErrorLaunchFailure, "__syncwarp with a partial mask is not emulated");
  g_thread->state = State::AtWarpBarrier;
  g_thread->op = WarpOp::Sync;
  yield();
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src) {
  if (mask != 0xffffffffu) fail(cudaErrorLaunchFailure, "a shuffle with a partial mask is not emulated");
  Thread* t = g_thread;
  t->state = State::AtWarpBarrier;
  t->op = WarpOp::Shuffle;
  t->post = bits;
  t->src = src;
  yield();
  return g_thread->result;
}

uint64_t warp_vote(unsigned mask, bool predicate) {
  if (mask != 0xffffffffu) fail(cudaErrorLaunchFailure, "a warp vote with a partial mask is not emulated");
  Thread* t = g_thread;
  t->state = State::AtWarpBarrier;
  t->op = WarpOp::Vote;
  t->post = predicate ? 1 : 0;
  yield();
  return g_thread->result;
}

void* dynamic_shared() { return g_dynamic.get(); }

void shared_declared(void* p, size_t bytes) {
  if (std::find(g_poisoned.begin(), g_poisoned.end(), p) != g_poisoned.end()) return;
  std::memset(p, 0xFF, bytes);
  g_poisoned.push_back(p);
  const bool known = std::any_of(g_static_shared.begin(), g_static_shared.end(),
                                 [p](const auto& s) { return s.first == p; });
  if (!known) g_static_shared.emplace_back(p, bytes);
}

void check_launch_bounds(int max_threads) {
  const int threads = static_cast<int>(g_block_dim.x * g_block_dim.y * g_block_dim.z);
  if (threads > max_threads && g_thread->linear == 0)
    fail(cudaErrorLaunchOutOfResources, "a block of " + std::to_string(threads) +
                                            " threads launched for a kernel with __launch_bounds__(" +
                                            std::to_string(max_threads) + ")");
}

cudaError_t get_last_error(bool clear) {
  const cudaError_t e = g_error;
  if (clear) g_error = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t err) {
  if (err == cudaSuccess) return "no error";
  if (err == g_message_code && !g_message.empty()) return g_message.c_str();
  return "CUDA emulator: error";
}

int device_attribute(cudaDeviceAttr attr) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: return g_device.sm_count;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: return g_device.optin_shared_bytes;
    case cudaDevAttrMaxSharedMemoryPerBlock: return kDefaultSharedBytes;
    case cudaDevAttrMaxThreadsPerBlock: return 1024;
  }
  return 0;
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > g_device.optin_shared_bytes) {
    fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                    " bytes of dynamic shared memory, over the device's " +
                                    std::to_string(g_device.optin_shared_bytes));
    return cudaErrorInvalidValue;
  }
  for (auto& [k, v] : g_max_dynamic)
    if (k == kernel) {
      v = bytes;
      return cudaSuccess;
    }
  g_max_dynamic.emplace_back(kernel, bytes);
  return cudaSuccess;
}

int blocks_per_sm(const void*, int, size_t) { return g_device.blocks_per_sm; }

void configure(const DeviceConfig& config) {
  g_device = config;
  g_rng.seed(config.seed);
  g_max_dynamic.clear();
}

Stats take_stats() {
  const Stats s = g_stats;
  g_stats = Stats{};
  return s;
}

void clear_error() {
  g_error = cudaSuccess;
  g_message_code = cudaSuccess;
  g_message.clear();
}

}  // namespace emu
