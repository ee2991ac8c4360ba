// Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), written from the paper's description.
//
// A counter-based generator is a pure function: 128-bit counter + 64-bit key -> 128 random bits.
// pyllm keys it with the request's seed and counts with the token's position in the sequence, so
// the draw for one token depends on nothing else: not the batch it sits in, not the device, not
// how many numbers other rows consumed. The same header compiles with g++ (CPU kernel) and nvcc
// (CUDA kernel), so both produce the same stream; pyllm/ops/sampling.py has the Python twin used
// by the reference.
//
// One round on counter (c0, c1, c2, c3) with key (k0, k1):
//   (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2          (32 x 32 -> 64-bit products)
//   -> (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
// and between rounds the key is bumped by the Weyl constants (k0 += W0, k1 += W1).
#pragma once

#include <cstdint>

// Functions marked PYLLM_HD compile for host and device under nvcc. They have internal linkage:
// the CPU sampler includes them in translation units built for different instruction sets, and
// each must keep its own copy.
#ifndef PYLLM_HD
#if defined(__CUDACC__)
#define PYLLM_HD static __host__ __device__ __forceinline__
#else
#define PYLLM_HD static inline __attribute__((always_inline))
#endif
#endif

namespace pyllm {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u;  // round multipliers (the paper's Philox4x32 constants)
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // key schedule: golden ratio and sqrt(3) - 1, in 32 bits
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr int kRounds = 10;

// Streams: independent sub-sequences for the random numbers one token may need.
constexpr uint32_t kStreamDraw = 0;  // the token draw
constexpr uint32_t kStreamXtc = 1;   // the XTC coin (Python side)

struct U32x4 {
  uint32_t v[4];
};

PYLLM_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The 10-round bijection: counter -> 128 random bits under key.
PYLLM_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < kRounds; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, ctr.v[0], hi0, lo0);
    mulhilo(kM1, ctr.v[2], hi1, lo1);
    const U32x4 next = {{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    ctr = next;
  }
  return ctr;
}

// 128 bits for (seed, position, stream): key = seed's two halves, counter = (position's two
// halves, stream, 0).
PYLLM_HD U32x4 bits(uint64_t seed, uint64_t position, uint32_t stream) {
  const U32x4 ctr = {{static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32), stream, 0u}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A uniform double in [0, 1) with 53 random bits: the top 53 bits of (word0 << 32 | word1).
PYLLM_HD double uniform(uint64_t seed, uint64_t position, uint32_t stream) {
  const U32x4 r = bits(seed, position, stream);
  const uint64_t x = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace philox
}  // namespace pyllm
