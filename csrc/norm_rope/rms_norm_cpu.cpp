// RMSNorm and RMSNorm fused with the residual add. The float32 inner loops come from
// row_kernels() (baseline / AVX2 / AVX-512, chosen by cpu_isa()); other dtypes go through a
// per-thread float32 row buffer.
#include <cmath>

#include "norm_rope/norm_rope.h"
#include "norm_rope/row_kernels.h"
#include "norm_rope/rows.h"

namespace pyllm {

using namespace norm_rope;

namespace {

inline float inv_rms(double sumsq, int64_t hidden, float eps) {
  return static_cast<float>(1.0 / std::sqrt(sumsq / static_cast<double>(hidden) + eps));
}

}  // namespace

void rms_norm_cpu(const TensorView& x, const TensorView& weight, const TensorView& out, float eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  const RowKernels& kern = row_kernels();
  const VecIn w(weight, hidden);
#pragma omp parallel if (worth_threads(rows, hidden))
  {
    RowIn xin;
    RowOut o;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t off = r * hidden;
      const float* xr = xin.load(x, off, hidden);
      float* orow = o.begin(out, off, hidden);
      kern.scale_mul(xr, inv_rms(kern.sumsq(xr, hidden), hidden, eps), w.data(), orow, hidden);
      o.commit(out, off, hidden);
    }
  }
}

void fused_add_rms_norm_cpu(const TensorView& x, const TensorView& residual, const TensorView& weight,
                            const TensorView& out, const TensorView& residual_out, float eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  const RowKernels& kern = row_kernels();
  const VecIn w(weight, hidden);
#pragma omp parallel if (worth_threads(rows, hidden))
  {
    RowIn xin, rin;
    RowOut s, o;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t off = r * hidden;
      const float* xr = xin.load(x, off, hidden);
      const float* rr = rin.load(residual, off, hidden);
      float* srow = s.begin(residual_out, off, hidden);
      double ss = kern.add_sumsq(xr, rr, srow, hidden);
      s.commit(residual_out, off, hidden);
      if (residual_out.dtype != DType::F32) {  // normalise the sum as stored (rounded)
        s.round_trip(residual_out, off, hidden);
        ss = kern.sumsq(srow, hidden);
      }
      float* orow = o.begin(out, off, hidden);
      kern.scale_mul(srow, inv_rms(ss, hidden, eps), w.data(), orow, hidden);
      o.commit(out, off, hidden);
    }
  }
}

}  // namespace pyllm
