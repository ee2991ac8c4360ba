#include <cstring>

#include "common/half.h"
#include "kv_cache/kv_cache.h"

namespace pyllm {

namespace {

// One [Hkv * D] row from src (dtype sd) into dst (dtype dd): a copy when the dtypes agree,
// otherwise through float32 with round-to-nearest-even (as torch's .to() does).
void copy_row(const void* src, int sd, int64_t src_off, void* dst, int dd, int64_t dst_off, int64_t n) {
  if (sd == dd) {
    const size_t elem = sd == 0 ? 4 : 2;
    std::memcpy(static_cast<char*>(dst) + dst_off * elem, static_cast<const char*>(src) + src_off * elem,
                static_cast<size_t>(n) * elem);
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_from_float(dst, dd, dst_off + i, load_as_float(src, sd, src_off + i));
}

}  // namespace

void write_kv_cache_cpu(const TensorView& k, const TensorView& v, const TensorView& k_cache,
                        const TensorView& v_cache, const TensorView& slot_mapping) {
  require(k.ndim == 3 && v.ndim == 3 && k_cache.ndim == 4 && v_cache.ndim == 4, "write_kv_cache: ranks");
  require(k.is_contiguous() && v.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              slot_mapping.is_contiguous() && slot_mapping.dtype == DType::I64,
          "write_kv_cache: layout");
  const int64_t T = k.shape[0];
  const int64_t row = k.shape[1] * k.shape[2];
  require(k_cache.shape[2] * k_cache.shape[3] == row && v.numel() == k.numel() && slot_mapping.numel() == T,
          "write_kv_cache: shapes");
  const int64_t* slots = slot_mapping.ptr<int64_t>();
  const int kd = static_cast<int>(k.dtype), vd = static_cast<int>(v.dtype);
  const int cd = static_cast<int>(k_cache.dtype), vcd = static_cast<int>(v_cache.dtype);
#pragma omp parallel for schedule(static) if (T * row >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    copy_row(k.data, kd, t * row, k_cache.data, cd, slot * row, row);
    copy_row(v.data, vd, t * row, v_cache.data, vcd, slot * row, row);
  }
}

}  // namespace pyllm
