// Arithmetic the CPU and CUDA samplers share, so both compute the same weights and orders.
// Usable from g++ and nvcc (PYLLM_HD from philox.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "sampling/philox.h"

namespace pyllm {
namespace sampling {

// Column order of the per-row parameter tensors (pyllm/ops/sampling.py builds them).
enum FParam : int {
  kTemperature = 0,
  kTopP = 1,
  kMinP = 2,
  kTypicalP = 3,
  kRepetitionPenalty = 4,
  kFrequencyPenalty = 5,
  kPresencePenalty = 6,
  kNumFParams = 7
};
enum IParam : int { kTopK = 0, kSeed = 1, kPosition = 2, kNumIParams = 3 };

PYLLM_HD uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

PYLLM_HD double double_of(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

PYLLM_HD uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_uint(x));
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

// exp(x) for x <= 0 in double precision (weights exp(z - max) are always of this form).
// Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, then the Taylor series of exp(r) to
// degree 13 (truncation error < 5e-18 relative), then a scale by 2^n built in the exponent
// bits. x below -708 (where exp heads into subnormals), -inf and negative NaN give 0. The tests
// on x use the bit pattern, not a floating-point compare: compilers keep FP compares as branches
// (they may trap) and would not vectorize loops over this function.
PYLLM_HD double exp_nonpos(double x) {
  const uint64_t kLimitBits = 0xC086200000000000ull;  // -708.0
  const uint64_t xb = bits_of(x);
  // keep all-ones unless x is negative with a magnitude above 708 (or -inf, or a negative NaN)
  const uint64_t keep = (xb <= kLimitBits || (xb >> 63) == 0) ? ~0ull : 0ull;
  const double xc = double_of((xb & keep) | (kLimitBits & ~keep));
  const double kMagic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double t = xc * 1.4426950408889634074 + kMagic;
  const double n = t - kMagic;
  const double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t ni = static_cast<int64_t>(bits_of(t) - bits_of(kMagic));  // n, exactly
  const uint64_t scale = (static_cast<uint64_t>(ni + 1023) << 52) & keep;  // 2^n, or 0
  return p * double_of(scale);
}

// An unsigned key that orders floats like their values (-0 and +0 equal); NaN sorts above +inf
// (a NaN with the sign bit set, below -inf). Branch-free.
PYLLM_HD uint32_t float_order_key(float f) {
  uint32_t u = bits_of(f);
  u = (u == 0x80000000u) ? 0u : u;  // -0 -> +0
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;
  return u ^ flip;
}

constexpr uint32_t kNegInfKey = 0x007FFFFFu;  // float_order_key(-inf)
constexpr uint32_t kPosInfKey = 0xFF800000u;  // float_order_key(+inf)

// The order key of a kept candidate, or 0 for -inf and NaN (never kept).
PYLLM_HD uint32_t candidate_key(float f) {
  const uint32_t k = float_order_key(f);
  return (k > kNegInfKey && k <= kPosInfKey) ? k : 0u;
}

// The float a float_order_key came from (-0 comes back as +0).
PYLLM_HD float float_of_order_key(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// The rank order every filter uses: larger key value first, then the lower token id.
// One 64-bit number per token: greater means earlier.
PYLLM_HD uint64_t rank_key(uint32_t value_key, int32_t id) {
  return (static_cast<uint64_t>(value_key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}

PYLLM_HD int32_t rank_key_id(uint64_t key) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

}  // namespace sampling
}  // namespace pyllm
