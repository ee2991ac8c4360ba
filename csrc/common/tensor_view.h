// A non-owning view of a tensor's memory: what every kernel in csrc/ receives.
// Kernels never see torch: pyllm/ops validates shapes, dtypes and devices, then hands over
// raw pointers with the shape and element strides. Nothing here allocates or frees.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyllm {

// The codes are part of the Python boundary (pyllm/ops/_library.py): append, never renumber.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, I64 = 4, U8 = 5, I8 = 6, F64 = 7 };
enum class Device : int { CPU = 0, CUDA = 1 };

constexpr int kMaxDims = 6;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0};
  int64_t stride[kMaxDims] = {0};  // in elements, as torch reports them

  TensorView() = default;
  TensorView(uintptr_t ptr, int dtype_code, const std::vector<int64_t>& sizes,
             const std::vector<int64_t>& strides, int device_code)
      : data(reinterpret_cast<void*>(ptr)),
        dtype(static_cast<DType>(dtype_code)),
        device(static_cast<Device>(device_code)),
        ndim(static_cast<int>(sizes.size())) {
    if (sizes.size() > static_cast<size_t>(kMaxDims) || sizes.size() != strides.size())
      throw std::invalid_argument("TensorView: bad rank or strides");
    if (dtype_code < 0 || dtype_code > 7) throw std::invalid_argument("TensorView: bad dtype");
    for (int i = 0; i < ndim; ++i) {
      if (sizes[i] < 0) throw std::invalid_argument("TensorView: negative size");
      shape[i] = sizes[i];
      stride[i] = strides[i];
    }
  }

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }

  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    int64_t expected = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && stride[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
};

// Kernels assume what pyllm/ops checked; these guards catch a broken contract early
// (they throw, pybind11 turns that into a Python exception).
inline void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("pyllm kernel contract: ") + what);
}

}  // namespace pyllm
