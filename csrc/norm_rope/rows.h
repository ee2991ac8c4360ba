// Row helpers for the small fused ops' CPU kernels: every kernel computes a row in float32.
// A float32 row is used in place; a float16 / bfloat16 row is converted into a per-thread
// buffer first and converted back when stored. Baseline code only: never include this from an
// *_avx2.cpp / *_avx512.cpp file (its inline functions must not be compiled with wider ISAs).
#pragma once

#include <cstdint>
#include <vector>

#include "common/half.h"
#include "common/tensor_view.h"

namespace pyllm {
namespace norm_rope {

inline void row_to_float(const TensorView& t, int64_t off, int64_t n, float* dst) {
  if (t.dtype == DType::F16) {
    const uint16_t* src = t.ptr<uint16_t>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = fp16_to_float(src[j]);
  } else if (t.dtype == DType::BF16) {
    const uint16_t* src = t.ptr<uint16_t>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(src[j]);
  } else {
    const float* src = t.ptr<float>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
  }
}

inline void row_from_float(const TensorView& t, int64_t off, int64_t n, const float* src) {
  if (t.dtype == DType::F16) {
    uint16_t* dst = t.ptr<uint16_t>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = float_to_fp16(src[j]);
  } else if (t.dtype == DType::BF16) {
    uint16_t* dst = t.ptr<uint16_t>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = float_to_bf16(src[j]);
  } else {
    float* dst = t.ptr<float>() + off;
    for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
  }
}

// A row read as float32: points into the tensor when it is float32, else into its own buffer.
class RowIn {
 public:
  const float* load(const TensorView& t, int64_t off, int64_t n) {
    if (t.dtype == DType::F32) return t.ptr<float>() + off;
    buf_.resize(static_cast<size_t>(n));
    row_to_float(t, off, n, buf_.data());
    return buf_.data();
  }

 private:
  std::vector<float> buf_;
};

// A row written as float32: `begin` gives where to write, `commit` stores it into the tensor.
class RowOut {
 public:
  float* begin(const TensorView& t, int64_t off, int64_t n) {
    if (t.dtype == DType::F32) return t.ptr<float>() + off;
    buf_.resize(static_cast<size_t>(n));
    return buf_.data();
  }
  void commit(const TensorView& t, int64_t off, int64_t n) {
    if (t.dtype != DType::F32) row_from_float(t, off, n, buf_.data());
  }
  // The float values the tensor now holds (rounded to its dtype), for kernels that reread them.
  void round_trip(const TensorView& t, int64_t off, int64_t n) {
    if (t.dtype != DType::F32) row_to_float(t, off, n, buf_.data());
  }

 private:
  std::vector<float> buf_;
};

// A whole small vector (a norm's weight or bias) as float32, converted once per call.
class VecIn {
 public:
  VecIn(const TensorView& t, int64_t n) {
    if (t.dtype == DType::F32) {
      ptr_ = t.ptr<float>();
    } else {
      buf_.resize(static_cast<size_t>(n));
      row_to_float(t, 0, n, buf_.data());
      ptr_ = buf_.data();
    }
  }
  const float* data() const { return ptr_; }

 private:
  std::vector<float> buf_;
  const float* ptr_ = nullptr;
};

// Split rows over threads only when there is enough work to pay for waking them.
inline bool worth_threads(int64_t rows, int64_t elems_per_row) {
  return rows > 1 && rows * elems_per_row >= 32768;
}

}  // namespace norm_rope
}  // namespace pyllm
