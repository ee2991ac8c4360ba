// The sampler's passes over the vocabulary, compiled once per instruction set: sample_cpu.cpp
// includes this with PYLLM_SAMPLING_ISA = baseline, sample_avx2.cpp with avx2 (each copy in its
// own namespace, so they never collide at link time). Plain loops over branch-free helpers,
// written for the auto-vectorizer: maxima go through integer order keys because compilers keep
// floating-point compares as branches (they may trap) and will not vectorize them.
#ifndef PYLLM_SAMPLING_ISA
#error "define PYLLM_SAMPLING_ISA before including sample_vec.h"
#endif

#include <cstdint>

#include "sampling/sample_math.h"

namespace pyllm {
namespace sampling {
namespace PYLLM_SAMPLING_ISA {

// w[j] = exp(z[j] - m) for j < n.
inline void exp_shifted(const float* __restrict z, int64_t n, double m, double* __restrict w) {
  for (int64_t j = 0; j < n; ++j) w[j] = exp_nonpos(static_cast<double>(z[j]) - m);
}

// w[j] = exp(z[ids[j]] - m) for j < n.
inline void exp_shifted_gather(const float* __restrict z, const int32_t* __restrict ids, int64_t n,
                               double m, double* __restrict w) {
  for (int64_t j = 0; j < n; ++j) w[j] = exp_nonpos(static_cast<double>(z[ids[j]]) - m);
}

// Sum of w[0..n) with eight interleaved accumulators (a fixed order, so results repeat).
inline double sum(const double* __restrict w, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += w[j + l];
  for (; j < n; ++j) acc[0] += w[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// sum(w[0..n)) for w[j] = exp(z[j] - m), without storing w: the same operations in the same
// order as exp_shifted followed by sum, so the result is bit-identical to that pair.
inline double exp_sum(const float* __restrict z, int64_t n, double m) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += exp_nonpos(static_cast<double>(z[j + l]) - m);
  for (; j < n; ++j) acc[0] += exp_nonpos(static_cast<double>(z[j]) - m);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The first j < n with float_order_key(z[j]) == key, or n. Blocks of 64 are tested whole (a
// loop without an early exit vectorizes); only the block holding the match is scanned.
inline int64_t first_with_key(const float* __restrict z, int64_t n, uint32_t key) {
  constexpr int64_t kBlock = 64;
  int64_t start = 0;
  for (; start + kBlock <= n; start += kBlock) {
    uint32_t hit = 0;
    for (int64_t j = start; j < start + kBlock; ++j) hit |= float_order_key(z[j]) == key ? 1u : 0u;
    if (hit) break;
  }
  for (int64_t j = start; j < n; ++j)
    if (float_order_key(z[j]) == key) return j;
  return n;
}

// The largest float_order_key of z[0..n) (n >= 1).
inline uint32_t max_key(const float* __restrict z, int64_t n) {
  uint32_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t k = float_order_key(z[j]);
    m = k > m ? k : m;
  }
  return m;
}

// The same over z[ids[j]].
inline uint32_t max_key_gather(const float* __restrict z, const int32_t* __restrict ids, int64_t n) {
  uint32_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t k = float_order_key(z[ids[j]]);
    m = k > m ? k : m;
  }
  return m;
}

// ids[0..count) = the j < n with z[j] > -inf (NaN excluded), in order; returns count.
inline int64_t finite_ids(const float* __restrict z, int64_t n, int32_t* __restrict ids) {
  int64_t finite = 0;
  for (int64_t j = 0; j < n; ++j) finite += candidate_key(z[j]) != 0u ? 1 : 0;
  if (finite == n) {
    for (int64_t j = 0; j < n; ++j) ids[j] = static_cast<int32_t>(j);
    return n;
  }
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    ids[count] = static_cast<int32_t>(j);
    count += candidate_key(z[j]) != 0u ? 1 : 0;
  }
  return count;
}

// out[b] = the largest candidate_key in block b of `block` values of z[0..n).
inline void block_max_keys(const float* __restrict z, int64_t n, int64_t block, uint32_t* __restrict out) {
  const int64_t nb = (n + block - 1) / block;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t end = (b + 1) * block < n ? (b + 1) * block : n;
    uint32_t m = 0;
    for (int64_t j = b * block; j < end; ++j) {
      const uint32_t k = candidate_key(z[j]);
      m = k > m ? k : m;
    }
    out[b] = m;
  }
}

}  // namespace PYLLM_SAMPLING_ISA
}  // namespace sampling
}  // namespace pyllm
