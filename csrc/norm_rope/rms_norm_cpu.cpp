#include <cmath>

#include "common/half.h"
#include "norm_rope/norm_rope.h"

namespace pyllm {

namespace {

// One row: accumulate the sum of squares in double for stability on long rows, scale in float.
template <class Load, class Store>
inline void norm_row(int64_t hidden, Load load, const TensorView& weight, Store store, float eps) {
  double ss = 0.0;
  for (int64_t j = 0; j < hidden; ++j) {
    float v = load(j);
    ss += static_cast<double>(v) * v;
  }
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(hidden) + eps));
  const int wd = static_cast<int>(weight.dtype);
  for (int64_t j = 0; j < hidden; ++j) store(j, load(j) * inv * load_as_float(weight.data, wd, j));
}

}  // namespace

void rms_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView& out, float eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  const int xd = static_cast<int>(x.dtype);
  const int od = static_cast<int>(out.dtype);
#pragma omp parallel for schedule(static) if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * hidden;
    norm_row(
        hidden, [&](int64_t j) { return load_as_float(x.data, xd, base + j); }, weight,
        [&](int64_t j, float v) { store_from_float(out.data, od, base + j, v); }, eps);
  }
}

void fused_add_rms_norm_cpu(const TensorView& x, const TensorView& residual, const TensorView& weight,
                            const TensorView& out, const TensorView& residual_out, float eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  const int xd = static_cast<int>(x.dtype);
  const int rd = static_cast<int>(residual.dtype);
  const int od = static_cast<int>(out.dtype);
  const int rod = static_cast<int>(residual_out.dtype);
#pragma omp parallel for schedule(static) if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * hidden;
    for (int64_t j = 0; j < hidden; ++j) {
      float s = load_as_float(x.data, xd, base + j) + load_as_float(residual.data, rd, base + j);
      store_from_float(residual_out.data, rod, base + j, s);
    }
    norm_row(
        hidden, [&](int64_t j) { return load_as_float(residual_out.data, rod, base + j); }, weight,
        [&](int64_t j, float v) { store_from_float(out.data, od, base + j, v); }, eps);
  }
}

}  // namespace pyllm
