#include <cstring>

#include "common/cpu_features.h"
#include "common/half.h"
#include "kv_cache/kv_cache.h"

namespace pyllm {

namespace {

using NarrowFn = void (*)(const float* src, uint16_t* dst, int64_t n, int dtype);

// The vector float -> f16/bf16 row conversion of this CPU, or nullptr on the baseline path.
NarrowFn pick_narrow() {
  switch (cpu_isa()) {
    case Isa::Avx512: return float_to_half_row_avx512;
    case Isa::Avx2: return float_to_half_row_avx2;
    default: return nullptr;
  }
}

// One [Hkv * D] row from src (dtype sd) into dst (dtype dd): a copy when the dtypes agree,
// otherwise through float32 with round-to-nearest-even (as torch's .to() does). float32 into a
// half cache (the model's case) goes through `narrow` when there is one.
void copy_row(const void* src, int sd, int64_t src_off, void* dst, int dd, int64_t dst_off, int64_t n,
              NarrowFn narrow) {
  if (sd == dd) {
    const size_t elem = sd == 0 ? 4 : 2;
    std::memcpy(static_cast<char*>(dst) + dst_off * elem, static_cast<const char*>(src) + src_off * elem,
                static_cast<size_t>(n) * elem);
    return;
  }
  if (sd == 0 && narrow != nullptr) {
    narrow(static_cast<const float*>(src) + src_off, static_cast<uint16_t*>(dst) + dst_off, n, dd);
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_from_float(dst, dd, dst_off + i, load_as_float(src, sd, src_off + i));
}

}  // namespace

namespace {

void write_rows(const void* k, const void* v, int src_dtype, void* k_cache, void* v_cache, int cache_dtype,
                const int64_t* slots, int64_t T, int64_t row) {
  const NarrowFn narrow = pick_narrow();
#pragma omp parallel for schedule(static) if (T * row >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    copy_row(k, src_dtype, t * row, k_cache, cache_dtype, slot * row, row, narrow);
    copy_row(v, src_dtype, t * row, v_cache, cache_dtype, slot * row, row, narrow);
  }
}

}  // namespace

void write_kv_cache_cpu(const TensorView& k, const TensorView& v, const TensorView& k_cache,
                        const TensorView& v_cache, const TensorView& slot_mapping) {
  require(k.ndim == 3 && v.ndim == 3 && k_cache.ndim == 4 && v_cache.ndim == 4, "write_kv_cache: ranks");
  require(k.is_contiguous() && v.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              slot_mapping.is_contiguous() && slot_mapping.dtype == DType::I64,
          "write_kv_cache: layout");
  require(k.dtype == v.dtype && k_cache.dtype == v_cache.dtype, "write_kv_cache: dtypes");
  const int64_t T = k.shape[0];
  const int64_t row = k.shape[1] * k.shape[2];
  require(k_cache.shape[2] * k_cache.shape[3] == row && v.numel() == k.numel() && slot_mapping.numel() == T,
          "write_kv_cache: shapes");
  write_rows(k.data, v.data, static_cast<int>(k.dtype), k_cache.data, v_cache.data,
             static_cast<int>(k_cache.dtype), slot_mapping.ptr<int64_t>(), T, row);
}

void write_kv_cache_cpu_ptr(uintptr_t k, uintptr_t v, uintptr_t k_cache, uintptr_t v_cache,
                            uintptr_t slot_mapping, int64_t T, int64_t row, int src_dtype, int cache_dtype) {
  require(src_dtype >= 0 && src_dtype <= 2 && cache_dtype >= 0 && cache_dtype <= 2, "write_kv_cache: dtypes");
  write_rows(reinterpret_cast<const void*>(k), reinterpret_cast<const void*>(v), src_dtype,
             reinterpret_cast<void*>(k_cache), reinterpret_cast<void*>(v_cache), cache_dtype,
             reinterpret_cast<const int64_t*>(slot_mapping), T, row);
}

}  // namespace pyllm
