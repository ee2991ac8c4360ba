// LayerNorm over the last dim: mean and variance in double (two passes over the row), the
// output in float32, stored in out's dtype.
#include <cmath>

#include "norm_rope/norm_rope.h"
#include "norm_rope/rows.h"

namespace pyllm {

using namespace norm_rope;

void layer_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView* bias,
                    const TensorView& out, float eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  const VecIn w(weight, hidden);
  const VecIn b(bias ? *bias : weight, hidden);  // weight stands in when there is no bias
  const float* bp = bias ? b.data() : nullptr;
#pragma omp parallel if (worth_threads(rows, hidden))
  {
    RowIn xin;
    RowOut o;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t off = r * hidden;
      const float* xr = xin.load(x, off, hidden);
      double sum = 0.0;
      for (int64_t j = 0; j < hidden; ++j) sum += xr[j];
      const double mean = sum / static_cast<double>(hidden);
      double var = 0.0;
      for (int64_t j = 0; j < hidden; ++j) {
        const double d = xr[j] - mean;
        var += d * d;
      }
      const float rstd = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(hidden) + eps));
      // x - mean in double: a float32 mean of a row far from zero would lose its low bits.
      float* orow = o.begin(out, off, hidden);
      const float* wp = w.data();
      if (bp) {
        for (int64_t j = 0; j < hidden; ++j) orow[j] = static_cast<float>(xr[j] - mean) * rstd * wp[j] + bp[j];
      } else {
        for (int64_t j = 0; j < hidden; ++j) orow[j] = static_cast<float>(xr[j] - mean) * rstd * wp[j];
      }
      o.commit(out, off, hidden);
    }
  }
}

}  // namespace pyllm
