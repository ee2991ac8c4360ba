// The fused sampler on the GPU: one thread block per row, the same semantics and the same Philox
// stream as sample_cpu.cpp (see pyllm/ops/sampling.py for what a row computes).
//
// No sort. Every filter that keeps "the fewest tokens, in some order, reaching a count or a mass"
// (top-k, top-p, typical-p) becomes a threshold on a 64-bit order key (value key << 32 | inverted
// id: unique per token), found by an MSD radix walk four bits at a time: each level sums the
// weights per 4-bit digit among the tokens matching the prefix so far, walks the digits from the
// top to the one where the running mass reaches the target, and fixes that digit. When the chosen
// digit holds a single token the walk stops early. All sums go through fixed-order block
// reductions (no floating-point atomics), so a row's result never depends on scheduling.
// Weights exp(z - max) are recomputed where needed instead of stored: the row's logits stay in the
// workspace and every pass reads floats only.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "sampling/sample_math.h"
#include "sampling/sampling.h"

namespace pyllm {
namespace sampling {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigits = 16;  // 4-bit radix
constexpr unsigned kFull = 0xffffffffu;

struct Shared {
  double warp_d[kWarps][2 * kDigits];
  unsigned long long warp_u[kWarps];
  double out_d[2 * kDigits];
  unsigned long long out_u;
};

struct Args {
  const float* logits;
  const float* fparams;
  const int64_t* iparams;
  const int64_t* recent;
  const int64_t* bias_rows;
  const int64_t* bias_ids;
  const float* bias_values;
  const int32_t* token_mask;  // [B, W] or null (W = 0)
  double* workspace;
  int64_t* token_ids;
  float* logprobs;
  int64_t* top_ids;
  float* top_logprobs;
  float* probs;
  int64_t V, N, K, n_top, ws_row, W;  // ws_row: workspace doubles per row; W: mask words
};

// ------------------------------------------------------------------ block reductions (fixed order)

// Sums `count` values per thread across the block; every thread gets the totals in `vals`.
template <int kCount>
__device__ void block_sums(double (&vals)[kCount], Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kCount; ++c) {
    double v = vals[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
    if (lane == 0) sh.warp_d[warp][c] = v;
  }
  __syncthreads();
  if (threadIdx.x < kCount) {
    double t = 0.0;
    for (int w = 0; w < kWarps; ++w) t += sh.warp_d[w][threadIdx.x];
    sh.out_d[threadIdx.x] = t;
  }
  __syncthreads();
#pragma unroll
  for (int c = 0; c < kCount; ++c) vals[c] = sh.out_d[c];
  __syncthreads();
}

__device__ double block_sum(double v, Shared& sh) {
  double vals[1] = {v};
  block_sums<1>(vals, sh);
  return vals[0];
}

__device__ unsigned long long block_max(unsigned long long v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_down_sync(kFull, v, o);
    v = other > v ? other : v;
  }
  if (lane == 0) sh.warp_u[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long m = 0;
    for (int w = 0; w < kWarps; ++w) m = sh.warp_u[w] > m ? sh.warp_u[w] : m;
    sh.out_u = m;
  }
  __syncthreads();
  const unsigned long long r = sh.out_u;
  __syncthreads();
  return r;
}

__device__ unsigned long long block_min(unsigned long long v, Shared& sh) {
  return ~block_max(~v, sh);
}

// Inclusive prefix sum of one value per thread in thread order; `total` gets the block's sum
// (the last thread's inclusive value).
__device__ double block_inclusive_scan(double v, double& total, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double up = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += up;
  }
  if (lane == 31) sh.warp_d[warp][0] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double run = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      const double t = sh.warp_d[w][0];
      sh.warp_d[w][1] = run;  // exclusive offset of warp w
      run += t;
    }
    sh.out_d[0] = run;
  }
  __syncthreads();
  v += sh.warp_d[warp][1];
  total = sh.out_d[0];
  __syncthreads();
  return v;
}

// ------------------------------------------------------------------------------ row helpers

struct Row {
  const float* x;  // the logits as given
  float* z;        // penalized, biased logits (workspace bytes [0, 4V))
  uint8_t* kept;   // 1 = still a candidate (workspace bytes [4V, 5V))
  int* counts;     // penalty window counts (workspace bytes [8V, 12V))
  int64_t V;
};

__device__ uint64_t value_rank(const float* v, int64_t i) {
  return rank_key(float_order_key(v[i]), static_cast<int32_t>(i));
}

// max over kept tokens of z, as a double (-inf when none).
__device__ double kept_max(const Row& r, Shared& sh) {
  unsigned long long m = 0;
  for (int64_t i = threadIdx.x; i < r.V; i += kThreads)
    if (r.kept[i]) m = max(m, static_cast<unsigned long long>(float_order_key(r.z[i])));
  const unsigned long long g = block_max(m, sh);  // every thread takes part
  return g ? static_cast<double>(float_of_order_key(static_cast<uint32_t>(g))) : -CUDART_INF;
}

__device__ int32_t best_kept(const Row& r, Shared& sh) {
  unsigned long long best = 0;
  for (int64_t i = threadIdx.x; i < r.V; i += kThreads)
    if (r.kept[i]) best = max(best, static_cast<unsigned long long>(value_rank(r.z, i)));
  return rank_key_id(block_max(best, sh));
}

// The threshold T on key_of(i) such that the kept tokens with key >= T are the fewest, in key
// order (descending), whose weights reach `target`. The MSD radix walk described at the top.
template <class KeyOf, class WeightOf>
__device__ uint64_t fewest_reaching(const Row& r, KeyOf key_of, WeightOf weight_of, double target,
                                    Shared& sh) {
  if (!(target > 0.0)) return 0;  // no mass to reach (weights of 0 or NaN): keep everything
  uint64_t prefix = 0;
  double remaining = target;
  for (int shift = 60; shift >= 0; shift -= 4) {
    const uint64_t high = shift == 60 ? 0ull : (~0ull << (shift + 4));
    double acc[2 * kDigits];  // mass per digit, then count per digit
#pragma unroll
    for (int d = 0; d < 2 * kDigits; ++d) acc[d] = 0.0;
    for (int64_t i = threadIdx.x; i < r.V; i += kThreads) {
      if (!r.kept[i]) continue;
      const uint64_t key = key_of(i);
      if ((key & high) != prefix) continue;
      const int digit = static_cast<int>((key >> shift) & 15u);
      const double w = weight_of(i);
#pragma unroll
      for (int d = 0; d < kDigits; ++d) {
        acc[d] += d == digit ? w : 0.0;
        acc[kDigits + d] += d == digit ? 1.0 : 0.0;
      }
    }
    block_sums<2 * kDigits>(acc, sh);
    // Every thread walks the same totals to the same digit (unrolled: acc stays in registers).
    double above = 0.0, chosen_count = 0.0;
    int chosen = -1;
#pragma unroll
    for (int d = kDigits - 1; d >= 0; --d) {
      if (chosen < 0 && acc[kDigits + d] > 0.0) {
        if (above + acc[d] >= remaining) {
          chosen = d;
          chosen_count = acc[kDigits + d];
        } else {
          above += acc[d];
        }
      }
    }
    if (chosen < 0) return prefix;  // rounding fell short: keep the whole bin
    remaining -= above;
    prefix |= static_cast<uint64_t>(chosen) << shift;
    if (chosen_count == 1.0 && shift > 0) {
      // One token in the chosen bin: it is the boundary; its full key is the threshold.
      const uint64_t mask = ~0ull << shift;
      unsigned long long k = 0;
      for (int64_t i = threadIdx.x; i < r.V; i += kThreads) {
        if (!r.kept[i]) continue;
        const uint64_t key = key_of(i);
        if ((key & mask) == prefix) k = key;
      }
      return block_max(k, sh);
    }
  }
  return prefix;
}

template <class KeyOf>
__device__ int64_t keep_at_least(const Row& r, KeyOf key_of, uint64_t threshold, Shared& sh) {
  double c = 0.0;
  for (int64_t i = threadIdx.x; i < r.V; i += kThreads) {
    if (r.kept[i] && key_of(i) < threshold) r.kept[i] = 0;
    c += r.kept[i];
  }
  return static_cast<int64_t>(block_sum(c, sh));
}

// ------------------------------------------------------------------------------ the kernel

__global__ void __launch_bounds__(kThreads) sample_rows(Args a) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int64_t V = a.V;
  const int tid = threadIdx.x;
  const float* f = a.fparams + b * kNumFParams;
  const int64_t* ip = a.iparams + b * kNumIParams;
  const float temperature = f[kTemperature], top_p = f[kTopP], min_p = f[kMinP];
  const float typical_p = f[kTypicalP], rep = f[kRepetitionPenalty];
  const float freq = f[kFrequencyPenalty], pres = f[kPresencePenalty];
  const int64_t top_k = ip[kTopK];
  const uint64_t seed = static_cast<uint64_t>(ip[kSeed]), position = static_cast<uint64_t>(ip[kPosition]);

  Row r;
  r.x = a.logits + b * V;
  r.z = reinterpret_cast<float*>(a.workspace + b * a.ws_row);
  r.kept = reinterpret_cast<uint8_t*>(r.z + V);
  r.counts = reinterpret_cast<int*>(a.workspace + b * a.ws_row + V);
  r.V = V;

  // The model's log-softmax normalizer.
  unsigned long long mk = 0;
  for (int64_t i = tid; i < V; i += kThreads)
    mk = max(mk, static_cast<unsigned long long>(float_order_key(r.x[i])));
  const double xm = static_cast<double>(float_of_order_key(static_cast<uint32_t>(block_max(mk, sh))));
  double sx = 0.0;
  for (int64_t i = tid; i < V; i += kThreads) sx += exp_nonpos(static_cast<double>(r.x[i]) - xm);
  const double lse = xm + log(block_sum(sx, sh));

  // z = logits (-inf where the token mask clears the bit) + penalties + bias.
  const int32_t* mrow = a.W > 0 ? a.token_mask + b * a.W : nullptr;
  const float neg_inf = float_of_order_key(kNegInfKey);
  for (int64_t i = tid; i < V; i += kThreads)
    r.z[i] = (mrow == nullptr || ((static_cast<uint32_t>(mrow[i >> 5]) >> (i & 31)) & 1u)) ? r.x[i] : neg_inf;
  __syncthreads();
  if (rep != 1.0f || freq != 0.0f || pres != 0.0f) {
    // Count each id of the window (integer atomics: the totals do not depend on the order), then
    // whichever thread takes an id's count first applies that id's penalty, once.
    const int64_t* window = a.recent + b * a.N;
    for (int64_t j = tid; j < a.N; j += kThreads)
      if (window[j] >= 0 && window[j] < V) r.counts[window[j]] = 0;
    __syncthreads();
    for (int64_t j = tid; j < a.N; j += kThreads)
      if (window[j] >= 0 && window[j] < V) atomicAdd(&r.counts[window[j]], 1);
    __syncthreads();
    for (int64_t j = tid; j < a.N; j += kThreads) {
      const int64_t id = window[j];
      if (id < 0 || id >= V) continue;
      const int count = atomicExch(&r.counts[id], 0);
      if (count == 0) continue;  // another thread took this id
      float v = r.z[id];
      if (rep != 1.0f) v = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
      r.z[id] = __fsub_rn(v, __fadd_rn(__fmul_rn(static_cast<float>(count), freq), pres));
    }
  }
  __syncthreads();
  if (tid == 0) {  // in list order, like the CPU (duplicates add up in the same order)
    for (int64_t j = 0; j < a.K; ++j) {
      const int64_t id = a.bias_ids[j];
      if (a.bias_rows[j] == b && id >= 0 && id < V) r.z[id] = __fadd_rn(r.z[id], a.bias_values[j]);
    }
  }
  __syncthreads();

  double c = 0.0;
  for (int64_t i = tid; i < V; i += kThreads) {
    r.kept[i] = candidate_key(r.z[i]) != 0u ? 1 : 0;
    c += r.kept[i];
  }
  int64_t n = static_cast<int64_t>(block_sum(c, sh));

  int32_t token = 0;
  double prob = 0.0;  // of the token under the distribution it was drawn from
  if (n > 0) {
    prob = 1.0;
    const bool greedy = temperature == 0.0f;
    if (greedy && !(typical_p < 1.0f)) {
      token = best_kept(r, sh);
    } else {
      const float* z = r.z;
      auto rank_of = [z](int64_t i) { return value_rank(z, i); };
      if (top_k > 0 && top_k < n) {
        const uint64_t t = fewest_reaching(r, rank_of, [](int64_t) { return 1.0; },
                                           static_cast<double>(top_k), sh);
        n = keep_at_least(r, rank_of, t, sh);
      }
      if (typical_p < 1.0f && n > 1) {
        const double m = kept_max(r, sh);
        double sums[2] = {0.0, 0.0};  // sum(w), sum(w d)
        for (int64_t i = tid; i < V; i += kThreads) {
          if (!r.kept[i]) continue;
          const double d = m - static_cast<double>(z[i]);
          const double w = exp_nonpos(-d);
          sums[0] += w;
          sums[1] += w * d;
        }
        block_sums<2>(sums, sh);
        const double mean_d = sums[1] / sums[0];
        auto typical_of = [z, m, mean_d](int64_t i) {
          const float score = static_cast<float>(fabs((m - static_cast<double>(z[i])) - mean_d));
          return rank_key(~float_order_key(score), static_cast<int32_t>(i));
        };
        auto weight_of = [z, m](int64_t i) { return exp_nonpos(static_cast<double>(z[i]) - m); };
        const uint64_t t = fewest_reaching(r, typical_of, weight_of,
                                           static_cast<double>(typical_p) * sums[0], sh);
        n = keep_at_least(r, typical_of, t, sh);
      }
      if (top_p < 1.0f && n > 1) {
        const double m = kept_max(r, sh);
        auto weight_of = [z, m](int64_t i) { return exp_nonpos(static_cast<double>(z[i]) - m); };
        double s = 0.0;
        for (int64_t i = tid; i < V; i += kThreads)
          if (r.kept[i]) s += weight_of(i);
        const double total = block_sum(s, sh);
        const uint64_t t = fewest_reaching(r, rank_of, weight_of, static_cast<double>(top_p) * total, sh);
        n = keep_at_least(r, rank_of, t, sh);
      }
      if (min_p > 0.0f && n > 1) {
        const double m = kept_max(r, sh);
        const double threshold = static_cast<double>(min_p);
        for (int64_t i = tid; i < V; i += kThreads)
          if (r.kept[i] && !(exp_nonpos(static_cast<double>(z[i]) - m) >= threshold)) r.kept[i] = 0;
        __syncthreads();
      }
      if (greedy) {
        token = best_kept(r, sh);
      } else {
        // Temperature, then the draw: cumulative weights in id order, chunk by chunk.
        unsigned long long mky = 0;
        for (int64_t i = tid; i < V; i += kThreads)
          if (r.kept[i]) mky = max(mky, static_cast<unsigned long long>(float_order_key(__fdiv_rn(z[i], temperature))));
        const double my = static_cast<double>(float_of_order_key(static_cast<uint32_t>(block_max(mky, sh))));
        auto weight_at = [&](int64_t i) {
          return (i < V && r.kept[i]) ? exp_nonpos(static_cast<double>(__fdiv_rn(z[i], temperature)) - my) : 0.0;
        };
        double carry = 0.0, chunk_total;
        for (int64_t base = 0; base < V; base += kThreads) {
          block_inclusive_scan(weight_at(base + tid), chunk_total, sh);
          carry += chunk_total;
        }
        const double total = carry;
        if (!(total > 0.0) || !isfinite(total)) {
          token = best_kept(r, sh);  // z / T overflowed: the limit is the argmax
        } else {
          const double target = philox::uniform(seed, position, philox::kStreamDraw) * total;
          carry = 0.0;
          unsigned long long found = ~0ull;
          for (int64_t base = 0; base < V && found == ~0ull; base += kThreads) {
            const double w = weight_at(base + tid);
            const double cum = carry + block_inclusive_scan(w, chunk_total, sh);
            const bool hit = w > 0.0 && cum > target;
            found = block_min(hit ? static_cast<unsigned long long>(base + tid) : ~0ull, sh);
            carry += chunk_total;
          }
          if (found != ~0ull) {
            token = static_cast<int32_t>(found);
            prob = weight_at(token) / total;
          } else {
            token = best_kept(r, sh);
          }
        }
      }
    }
  }

  if (token < 0 || token >= V) {  // never reached; never out of bounds
    token = 0;
    prob = 0.0;
  }
  if (tid == 0) {
    a.token_ids[b] = token;
    a.logprobs[b] = static_cast<float>(static_cast<double>(r.x[token]) - lse);
    a.probs[b] = static_cast<float>(prob);
  }
  // Top-n alternatives of the model's distribution: n rounds of "the best key below the last".
  unsigned long long below = ~0ull;
  for (int64_t j = 0; j < a.n_top; ++j) {
    unsigned long long best = 0;
    for (int64_t i = tid; i < V; i += kThreads) {
      const unsigned long long k = value_rank(r.x, i);
      if (k < below) best = max(best, k);
    }
    below = block_max(best, sh);
    if (tid == 0) {
      const int32_t id = rank_key_id(below);
      a.top_ids[b * a.n_top + j] = id;
      a.top_logprobs[b * a.n_top + j] = static_cast<float>(static_cast<double>(r.x[id]) - lse);
    }
  }
}

}  // namespace
}  // namespace sampling

void sample_tokens_cuda(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                        const TensorView& recent_ids, const TensorView& bias_rows,
                        const TensorView& bias_ids, const TensorView& bias_values,
                        const TensorView& token_mask, const TensorView& workspace,
                        const TensorView& token_ids,
                        const TensorView& logprobs, const TensorView& top_ids,
                        const TensorView& top_logprobs, const TensorView& probs, uintptr_t stream) {
  using namespace sampling;
  require(logits.device == Device::CUDA && logits.dtype == DType::F32 && logits.ndim == 2,
          "logits f32 [B, V] on CUDA");
  const int64_t B = logits.size(0), V = logits.size(1);
  require(workspace.dtype == DType::F64 && workspace.ndim == 2 && workspace.size(0) >= B &&
              workspace.is_contiguous(),
          "workspace float64 [B, W], contiguous");
  Args a;
  a.logits = logits.ptr<float>();
  a.fparams = fparams.ptr<float>();
  a.iparams = iparams.ptr<int64_t>();
  a.recent = recent_ids.ptr<int64_t>();
  a.bias_rows = bias_rows.ptr<int64_t>();
  a.bias_ids = bias_ids.ptr<int64_t>();
  a.bias_values = bias_values.ptr<float>();
  a.W = token_mask.size(1);
  require(a.W == 0 || (token_mask.dtype == DType::I32 && token_mask.is_contiguous() && a.W * 32 >= V),
          "token_mask int32 [B, ceil(V / 32)] or [B, 0]");
  a.token_mask = a.W ? token_mask.ptr<int32_t>() : nullptr;
  a.workspace = static_cast<double*>(workspace.data);
  a.token_ids = token_ids.ptr<int64_t>();
  a.logprobs = logprobs.ptr<float>();
  a.top_ids = top_ids.ptr<int64_t>();
  a.top_logprobs = top_logprobs.ptr<float>();
  a.probs = probs.ptr<float>();
  a.V = V;
  a.N = recent_ids.size(1);
  a.K = bias_rows.size(0);
  a.n_top = top_ids.size(1);
  a.ws_row = workspace.size(1);
  require(a.ws_row >= 2 * V, "workspace row too small (needs 2 doubles per token)");
  if (B == 0) return;
  sample_rows<<<static_cast<unsigned>(B), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("sample_tokens_cuda launch failed: ") + cudaGetErrorString(err));
}

}  // namespace pyllm
