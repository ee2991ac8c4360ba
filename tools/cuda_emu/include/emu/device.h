// The CUDA emulator's device side: what the kernels in csrc/*.cu use, for g++ on the CPU.
//
// tools/cuda_emu/rewrite.py turns each .cu file into C++ (launches become emu::launch calls,
// __shared__ variables become per-block statics), and these shim headers stand in for
// cuda_runtime.h, cuda_fp16.h and cuda_bf16.h. A launch runs its blocks one after another; a
// block's threads are fibers on one CPU thread that switch only at __syncthreads, __syncwarp and
// the warp shuffles (runtime.cpp), so a kernel runs with the semantics CUDA promises and no more:
// - the threads of a block run in a shuffled order between two barriers, and shared memory is
//   filled with 0xFF bytes (NaN as float) when a block starts, so a missing barrier or an
//   uninitialized shared read changes the result;
// - a barrier that not every thread reaches, or reaches at a different __syncthreads, is a
//   deadlock or a divergence error instead of a hang;
// - a shuffle that reads a lane that has exited gets poison, counted in emu::stats() (a vote
//   counts exited lanes as inactive, which CUDA defines);
// - a launch over the device's limits (block size, grid, shared memory, __launch_bounds__, the
//   48 KB dynamic shared memory default unless cudaFuncSetAttribute raised it) fails the way
//   the CUDA runtime does: cudaGetLastError reports it.
// It says nothing of speed, of memory coalescing, or of races between blocks (blocks run in turn).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

// ------------------------------------------------------------------ qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ------------------------------------------------------------------ vector types

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

typedef struct emu_stream* cudaStream_t;
constexpr int warpSize = 32;

// ------------------------------------------------------------------ the emulator's state

namespace emu {

struct Thread;           // one CUDA thread (a fiber)
extern Thread* g_thread;  // the thread running now
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
const uint3& thread_idx();

void block_barrier(const char* file, int line);  // __syncthreads
void warp_barrier(unsigned mask);                 // __syncwarp
// A warp shuffle of 8 bytes: lane reads `bits` of lane src (its own when src is outside the
// warp; poison when src has exited).
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src);
// A warp vote: the ballot of the waiting lanes' predicates (low 32 bits) and the mask of the
// lanes that voted (high 32 bits; exited lanes are inactive and vote 0, as on a GPU).
uint64_t warp_vote(unsigned mask, bool predicate);
int lane_id();
void* dynamic_shared();
void shared_declared(void* p, size_t bytes);  // a __shared__ variable: poisoned once per block
void check_launch_bounds(int max_threads);

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
};
// Runs body() as every thread of every block of the launch (or records why it can't launch).
void run_kernel(const void* kernel, const LaunchConfig& cfg, void (*body)(void*), void* ctx);

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  LaunchConfig cfg;
  template <class... A>
  void operator()(A&&... args) const {
    // Each parameter converted to the kernel's type once, as the CUDA runtime copies them.
    std::tuple<P...> params(std::forward<A>(args)...);
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<P...>* params;
    } ctx{kernel, &params};
    run_kernel(reinterpret_cast<const void*>(kernel), cfg,
               [](void* c) {
                 auto* x = static_cast<Ctx*>(c);
                 std::apply(x->kernel, *x->params);
               },
               &ctx);
  }
};

template <class... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes = 0,
                      cudaStream_t = nullptr) {
  return Launcher<P...>{kernel, LaunchConfig{grid, block, shared_bytes}};
}

template <class T>
T shuffle(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
#define __syncthreads() ::emu::block_barrier(__FILE__, __LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask); }

// The source lane as CUDA defines it for each shuffle (width: a power of two up to 32).
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = emu::lane_id(), base = lane & ~(width - 1);
  return emu::shuffle(mask, v, base + (src & (width - 1)));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = emu::lane_id(), src = lane ^ lane_mask;
  return emu::shuffle(mask, v, (src & ~(width - 1)) > (lane & ~(width - 1)) ? lane : src);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id(), src = lane + static_cast<int>(delta);
  return emu::shuffle(mask, v, (src & ~(width - 1)) != (lane & ~(width - 1)) ? lane : src);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id(), src = lane - static_cast<int>(delta);
  return emu::shuffle(mask, v, src < (lane & ~(width - 1)) ? lane : src);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(emu::warp_vote(mask, predicate != 0));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(emu::warp_vote(mask, predicate != 0)) != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
  const uint64_t r = emu::warp_vote(mask, predicate != 0);
  return static_cast<unsigned>(r) == static_cast<unsigned>(r >> 32);
}

// ------------------------------------------------------------------ arithmetic

// Integer and float min/max as CUDA overloads them (one type each; mixed calls do not compile,
// as they would not on nvcc without a conversion).
#define EMU_MINMAX(T)                                        \
  inline T min(T a, T b) { return b < a ? b : a; }         \
  inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// Built with -ffp-contract=off: a * b + c is two roundings, as __fmul_rn/__fadd_rn promise;
// fmaf is one.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::isfinite;
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

template <class To, class From>
inline To emu_bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
inline float __uint_as_float(unsigned u) { return emu_bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return emu_bit_cast<unsigned>(f); }
inline float __int_as_float(int i) { return emu_bit_cast<float>(i); }
inline int __float_as_int(float f) { return emu_bit_cast<int>(f); }
inline double __longlong_as_double(long long v) { return emu_bit_cast<double>(v); }
inline long long __double_as_longlong(double d) { return emu_bit_cast<long long>(d); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(unsigned v) { return v ? __builtin_clz(v) : 32; }

template <class T>
inline T __ldg(const T* p) { return *p; }

// Fibers switch only at barriers and shuffles, so a read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <class T>
inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <class T>
inline T atomicMax(T* p, T v) { const T old = *p; if (old < v) *p = v; return old; }
template <class T>
inline T atomicMin(T* p, T v) { const T old = *p; if (v < old) *p = v; return old; }
