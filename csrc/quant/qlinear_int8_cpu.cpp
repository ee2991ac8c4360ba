// The int8-activation path's portable pieces: the activation quantizer and a scalar kernel with
// the same math as the vector ones (qlinear_int8.h), used on CPUs without AVX2.
#include <cmath>
#include <cstring>

#include "common/cpu_features.h"
#include "quant/qlinear_blocks.h"
#include "quant/qlinear_int8.h"

namespace pyllm {

bool qlinear_int8_supported(int qtype) {
  return qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ8_0 || qlinear_superblock_qtype(qtype);
}

// The superblock types' kernels read rows straight from the blocks: no gather to pay for.
int64_t qlinear_int8_min_tokens(int qtype) { return qtype == kQ8_0 ? 16 : qlinear_superblock_qtype(qtype) ? 1 : 4; }

bool qlinear_int8_pays(int qtype, int64_t T, bool packed) {
  if (qlinear_superblock_qtype(qtype)) return cpu_isa() == Isa::Avx512 || T < kPackedMinTokens;
  return packed || T >= qlinear_int8_min_tokens(qtype);
}

void quantize_acts_baseline(const float* x, int64_t ldx, int64_t t0, int64_t t1, const Int8Acts& acts) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* xr = x + t * ldx;
    int8_t* q = const_cast<int8_t*>(acts.q) + t * acts.K;
    for (int64_t b = 0; b < acts.blocks; ++b) {
      const float* xb = xr + b * kQBlock;
      float amax = 0.f;
      for (int i = 0; i < kQBlock; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
      const float inv = amax > 0.f ? 127.0f / amax : 0.f;
      int32_t qsum = 0;
      for (int i = 0; i < kQBlock; ++i) {
        const int v = static_cast<int>(std::nearbyint(xb[i] * inv));  // half to even
        q[b * kQBlock + i] = static_cast<int8_t>(v);
        qsum += v;
      }
      const int64_t at = t * acts.blocks + b;
      const float scale = amax / 127.0f;
      const_cast<float*>(acts.scale)[at] = scale;
      const_cast<int32_t*>(acts.qsum)[at] = qsum;
      const_cast<float*>(acts.xsum)[at] = scale * static_cast<float>(qsum);
    }
  }
}

void qlinear_int8_tile_baseline(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1, int64_t n0,
                                int64_t n1) {
  const int64_t cbytes = qchunk_bytes(a.qtype);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.w + n * a.ldw;
    for (int64_t t = t0; t < t1; ++t) {
      const int8_t* xq = q.q + t * q.K;
      float acc = 0.f;
      for (int64_t b = 0; b < q.blocks; ++b) {
        const uint8_t* p = row + b * cbytes;
        const int8_t* xb = xq + b * kQBlock;
        const int64_t at = t * q.blocks + b;
        const float d = load_f16(p);
        int32_t dot = 0;
        if (a.qtype == kQ8_0) {
          for (int i = 0; i < kQBlock; ++i) dot += static_cast<int8_t>(p[2 + i]) * xb[i];
          acc += static_cast<float>(dot) * (d * q.scale[at]);
        } else {
          const uint8_t* codes = p + (a.qtype == kQ4_1 ? 4 : 2);
          for (int j = 0; j < 16; ++j) dot += (codes[j] & 0x0F) * xb[j] + (codes[j] >> 4) * xb[16 + j];
          if (a.qtype == kQ4_0) dot -= 8 * q.qsum[at];
          acc += static_cast<float>(dot) * (d * q.scale[at]);
          if (a.qtype == kQ4_1) acc += load_f16(p + 2) * q.xsum[at];
        }
      }
      if (a.bias) acc += a.bias[n];
      a.out[t * a.ldo + n] = acc;
    }
  }
}

// Each block decoded exactly (superblock_decode), then each 32-weight group meets its activation
// block: scale_b * sum_k w_k q_k, the group's sum taken in float32 rather than in int32 before
// the scaling, so this agrees with the vector kernels and qlinear_int8_ref to float32 rounding.
void qlinear_int8_tile_superblock_baseline(const QLinearArgs& a, const Int8Acts& q, int64_t t0, int64_t t1,
                                           int64_t n0, int64_t n1) {
  const int bsize = superblock_weights(a.qtype);
  const int64_t bbytes = superblock_bytes(a.qtype);
  const int64_t blocks = a.K / bsize;
  float w[kQK_K];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.w + n * a.ldw;
    for (int64_t t = t0; t < t1; ++t) {
      const int8_t* xq = q.q + t * q.K;
      float acc = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        superblock_decode(a.qtype, row + b * bbytes, w);
        for (int g = 0; g < bsize / kQBlock; ++g) {
          const int64_t k0 = b * bsize + g * kQBlock;
          float s = 0.f;
          for (int i = 0; i < kQBlock; ++i) s += w[g * kQBlock + i] * static_cast<float>(xq[k0 + i]);
          acc += s * q.scale[t * q.blocks + k0 / kQBlock];
        }
      }
      if (a.bias) acc += a.bias[n];
      a.out[t * a.ldo + n] = acc;
    }
  }
}

}  // namespace pyllm
