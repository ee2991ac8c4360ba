// RoPE on q and k in one pass over the tokens: each token's cos/sin row is read once and
// applied to all its q and k heads. Positions were checked against cos_sin's rows in Python.
#include "norm_rope/norm_rope.h"
#include "norm_rope/rows.h"

namespace pyllm {

using namespace norm_rope;

namespace {

// Rotate one head (float32 in, float32 out); dims >= rotary pass through.
inline void rotate_head(const float* x, float* o, const float* cos, const float* sin, int64_t head_dim,
                        int64_t rotary, bool neox) {
  const int64_t half = rotary / 2;
  if (neox) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = x[i + half];
      o[i] = x1 * cos[i] - x2 * sin[i];
      o[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[2 * i], x2 = x[2 * i + 1];
      o[2 * i] = x1 * cos[i] - x2 * sin[i];
      o[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
    }
  }
  for (int64_t j = rotary; j < head_dim; ++j) o[j] = x[j];
}

}  // namespace

void rope_cpu(const TensorView& q, const TensorView& k, const TensorView& positions,
              const TensorView& cos_sin, const TensorView& q_out, const TensorView& k_out, bool neox) {
  const int64_t tokens = q.size(0), hq = q.size(1), hk = k.size(1), head_dim = q.size(2);
  const int64_t rotary = cos_sin.size(1);
  const int64_t* pos = positions.ptr<int64_t>();
  const float* table = cos_sin.ptr<float>();
#pragma omp parallel if (worth_threads(tokens, (hq + hk) * head_dim))
  {
    RowIn in;
    RowOut o;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float* cos = table + pos[t] * rotary;
      const float* sin = cos + rotary / 2;
      for (int64_t h = 0; h < hq + hk; ++h) {
        const bool is_q = h < hq;
        const TensorView& src = is_q ? q : k;
        const TensorView& dst = is_q ? q_out : k_out;
        const int64_t off = (t * (is_q ? hq : hk) + (is_q ? h : h - hq)) * head_dim;
        const float* x = in.load(src, off, head_dim);
        float* y = o.begin(dst, off, head_dim);
        rotate_head(x, y, cos, sin, head_dim, rotary, neox);
        o.commit(dst, off, head_dim);
      }
    }
  }
}

}  // namespace pyllm
