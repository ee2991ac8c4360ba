// The fused sampler on the CPU: one row per OpenMP task, everything in thread-local scratch.
//
// Per row (the semantics are spelled out in pyllm/ops/sampling.py and mirrored by its reference):
//   z = logits + penalties (recent ids) + logit bias
//   K = tokens with a finite z; then the active filters narrow K in this order:
//   top-k, typical-p, top-p, min-p  (each on the distribution renormalized over K)
//   temperature 0 -> the first token of K in rank order (largest z, then lowest id)
//   otherwise     -> y = z / T over K, weights exp(y - max y), cumulative sums in id order,
//                    the first token whose cumulative weight exceeds u * total,
//                    u = Philox4x32-10(seed, position) as a 53-bit uniform
//   log-probs from log-softmax of the ORIGINAL logits (the model's distribution); also the
//   chosen token's probability under the distribution it was drawn from (1 when greedy).
//
// No sort of the vocabulary. top-k keeps a small sorted buffer (k <= 64) or uses nth_element.
// top-p and typical-p ("the fewest tokens, in some order, whose mass reaches a target") use a
// mass histogram over the top 11 bits of the order key: one pass finds the bucket holding the
// boundary, every token in an earlier bucket is kept, and a mass-weighted quickselect resolves the
// boundary bucket alone.
#define PYLLM_SAMPLING_ISA baseline
#include "sampling/sample_vec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/cpu_features.h"
#include "sampling/sampling.h"

namespace pyllm {
namespace sampling {

const VecKernels& vec_kernels_baseline() {
  static const VecKernels k = {&baseline::exp_shifted, &baseline::exp_shifted_gather,
                               &baseline::sum,         &baseline::max_key,
                               &baseline::max_key_gather, &baseline::finite_ids,
                               &baseline::block_max_keys, &baseline::exp_sum,
                               &baseline::first_with_key};
  return k;
}

const VecKernels& cpu_vec_kernels() {
  return cpu_isa() >= Isa::Avx2 ? vec_kernels_avx2() : vec_kernels_baseline();
}

namespace {

constexpr int kBucketBits = 11;
constexpr int kBuckets = 1 << kBucketBits;

struct Item {
  uint64_t key;  // rank_key: greater = earlier in the filter's order
  double w;      // the token's weight (unnormalized probability)
};

struct RowParams {
  float temperature, top_p, min_p, typical_p, repetition, frequency, presence;
  int64_t top_k;
  uint64_t seed, position;
};

struct Scratch {
  std::vector<float> z, y;
  std::vector<int32_t> ids, kept;
  std::vector<double> w, w_raw, block;
  std::vector<uint32_t> vkeys, block_max;
  std::vector<uint64_t> keys, candidates;
  std::vector<Item> items;
  std::vector<int64_t> recent;
  std::vector<uint8_t> mask;
  std::vector<double> bucket_mass;
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

uint64_t value_rank(const float* z, int32_t id) { return rank_key(float_order_key(z[id]), id); }

// The kept set and what is known about it: `complete` means ids holds every finite token (no
// filter removed anything yet), `dense` that this is 0..V-1 (every logit finite), `sorted` that
// ids ascend. (`raw`, passed beside it, means z is still the unmodified logits, so the weights
// computed for the log-probs can be reused.)
struct Kept {
  std::vector<int32_t>& ids;
  bool complete;
  bool dense;
  bool sorted;
  void narrowed(bool keeps_order) {
    complete = dense = false;
    sorted = sorted && keeps_order;
  }
};

// Repetition (CTRL: divide positive logits, multiply negative ones), then frequency and presence
// (OpenAI: subtract count * frequency + presence), once per distinct id in the window.
// z[i] = -inf for each token whose bit is clear in this row's mask; true when any was.
bool apply_token_mask(float* z, int64_t V, const int32_t* words, int64_t W) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int64_t w = 0; w < W && w * 32 < V; ++w) {
    const uint32_t bits = static_cast<uint32_t>(words[w]);
    if (bits == 0xFFFFFFFFu) continue;
    const int64_t end = std::min<int64_t>(32, V - w * 32);
    for (int64_t k = 0; k < end; ++k) {
      if (!((bits >> k) & 1u)) {
        z[w * 32 + k] = neg_inf;
        any = true;
      }
    }
  }
  return any;
}

bool apply_penalties(float* z, int64_t V, const int64_t* recent, int64_t N, const RowParams& p,
                     std::vector<int64_t>& buf) {
  if (p.repetition == 1.0f && p.frequency == 0.0f && p.presence == 0.0f) return false;
  buf.clear();
  for (int64_t j = 0; j < N; ++j)
    if (recent[j] >= 0 && recent[j] < V) buf.push_back(recent[j]);
  std::sort(buf.begin(), buf.end());
  for (size_t i = 0; i < buf.size();) {
    size_t j = i;
    while (j < buf.size() && buf[j] == buf[i]) ++j;
    float& v = z[buf[i]];
    if (p.repetition != 1.0f) v = v > 0.0f ? v / p.repetition : v * p.repetition;
    const float sub = static_cast<float>(j - i) * p.frequency + p.presence;
    v = v - sub;
    i = j;
  }
  return !buf.empty();
}

// keys[0..k) = the k greatest of key_of(0..n) (unique), sorted descending.
template <class KeyOf>
void top_keys(int64_t n, int64_t k, KeyOf key_of, std::vector<uint64_t>& keys) {
  if (k <= 64) {
    keys.assign(static_cast<size_t>(k), 0);
    int64_t filled = 0;
    for (int64_t j = 0; j < n; ++j) {
      const uint64_t key = key_of(j);
      int64_t pos;
      if (filled < k) {
        pos = filled++;
      } else if (key > keys[k - 1]) {
        pos = k - 1;
      } else {
        continue;
      }
      while (pos > 0 && keys[pos - 1] < key) {
        keys[pos] = keys[pos - 1];
        --pos;
      }
      keys[pos] = key;
    }
    keys.resize(static_cast<size_t>(filled));
  } else {
    keys.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) keys[j] = key_of(j);
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint64_t>());
    keys.resize(static_cast<size_t>(k));
    std::sort(keys.begin(), keys.end(), std::greater<uint64_t>());
  }
}

// keys[0..) = the k first tokens of z[0..V) in rank order (fewer when fewer are finite), sorted
// descending; -inf and NaN are skipped unless `finite_only` is false and fewer than k are finite.
// Blocks of 64: the k-th largest block maximum tau bounds the k-th largest value from below
// (k blocks reach it), so only the elements >= tau of the blocks reaching tau are looked at.
void top_candidates(const float* z, int64_t V, int64_t k, bool finite_only, Scratch& s,
                    const VecKernels& vk, std::vector<uint64_t>& keys) {
  constexpr int64_t kBlock = 64;
  const int64_t nb = (V + kBlock - 1) / kBlock;
  uint32_t tau = 0;
  if (k * 4 <= nb) {
    s.block_max.resize(static_cast<size_t>(nb));
    vk.block_max_keys(z, V, kBlock, s.block_max.data());
    s.vkeys.assign(s.block_max.begin(), s.block_max.end());
    std::nth_element(s.vkeys.begin(), s.vkeys.begin() + (k - 1), s.vkeys.end(), std::greater<uint32_t>());
    tau = s.vkeys[k - 1];
  }
  if (tau == 0) {  // few blocks, or fewer than k blocks with a finite value: one plain pass
    if (finite_only) {
      top_keys(V, k, [&](int64_t i) { return rank_key(candidate_key(z[i]), static_cast<int32_t>(i)); }, keys);
      while (!keys.empty() && (keys.back() >> 32) == 0) keys.pop_back();
    } else {
      top_keys(V, k, [&](int64_t i) { return value_rank(z, static_cast<int32_t>(i)); }, keys);
    }
    return;
  }
  s.candidates.clear();
  for (int64_t b = 0; b < nb; ++b) {
    if (s.block_max[b] < tau) continue;
    const int64_t end = std::min(V, (b + 1) * kBlock);
    for (int64_t i = b * kBlock; i < end; ++i) {
      const uint32_t key = candidate_key(z[i]);
      if (key >= tau) s.candidates.push_back(rank_key(key, static_cast<int32_t>(i)));
    }
  }
  top_keys(static_cast<int64_t>(s.candidates.size()), k, [&](int64_t j) { return s.candidates[j]; }, keys);
}

// The first kept id in rank order (largest z, lowest id).
int32_t best_by_rank(const float* z, int64_t V, const Kept& k, Scratch& s, const VecKernels& vk) {
  if (k.ids.empty()) return 0;
  if (k.complete) {
    top_candidates(z, V, 1, true, s, vk, s.keys);
    return rank_key_id(s.keys[0]);
  }
  uint64_t best = 0;
  for (int32_t id : k.ids) best = std::max(best, value_rank(z, id));
  return rank_key_id(best);
}

// Reorder items[0..n) so that the fewest earliest items (greatest keys) whose weights reach
// `target` come first; return how many. Quickselect on mass: partition around a pivot, keep the
// side holding the boundary; expected O(n).
int64_t select_mass(Item* items, int64_t n, double target) {
  int64_t lo = 0, hi = n;
  double acc = 0.0;  // mass of items[0..lo), all kept; acc < target throughout
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    int64_t a = lo, b = mid, c = hi - 1;  // median of three (by key) as the pivot
    if (items[a].key > items[b].key) std::swap(a, b);
    if (items[b].key > items[c].key) std::swap(b, c);
    if (items[a].key > items[b].key) std::swap(a, b);
    std::swap(items[b], items[hi - 1]);
    const Item pivot = items[hi - 1];
    int64_t p = lo;
    double mass = 0.0;  // of the items before the pivot
    for (int64_t j = lo; j < hi - 1; ++j) {
      if (items[j].key > pivot.key) {
        mass += items[j].w;
        std::swap(items[j], items[p]);
        ++p;
      }
    }
    std::swap(items[p], items[hi - 1]);
    if (acc + mass >= target) {
      hi = p;
    } else if (acc + mass + pivot.w >= target) {
      return p + 1;
    } else {
      acc += mass + pivot.w;
      lo = p + 1;
    }
  }
  return hi;
}

// Keep the fewest of k.ids, in (vkeys desc, id asc) order, whose weights w reach `target`.
// Bucket the tokens by the top 11 bits of their 32-bit value key, accumulating mass; the walk
// from the top bucket finds the one where the running mass reaches the target; earlier buckets
// are kept whole and only the boundary bucket goes through select_mass.
void keep_fewest_reaching(Kept& k, const uint32_t* vkeys, const double* w, double target, Scratch& s) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (!(target > 0.0)) return;  // no mass to reach (weights of 0 or NaN from +inf logits): keep all
  s.bucket_mass.assign(kBuckets, 0.0);
  double* mass = s.bucket_mass.data();
  for (int64_t j = 0; j < n; ++j) mass[vkeys[j] >> (32 - kBucketBits)] += w[j];
  double before = 0.0;  // mass of the buckets above the boundary
  int boundary = -1;
  for (int b = kBuckets - 1; b >= 0; --b) {
    if (before + mass[b] >= target) {
      boundary = b;
      break;
    }
    before += mass[b];
  }
  if (boundary < 0) return;  // the total fell short of the target by rounding: keep everything
  const uint32_t top = static_cast<uint32_t>(boundary);
  s.kept.clear();
  s.items.clear();
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t bucket = vkeys[j] >> (32 - kBucketBits);
    if (bucket > top)
      s.kept.push_back(k.ids[j]);
    else if (bucket == top)
      s.items.push_back({rank_key(vkeys[j], k.ids[j]), w[j]});
  }
  // target - before > 0 and the boundary bucket's mass reaches it, so c >= 1
  const int64_t c = select_mass(s.items.data(), static_cast<int64_t>(s.items.size()), target - before);
  for (int64_t j = 0; j < c; ++j) s.kept.push_back(rank_key_id(s.items[j].key));
  if (s.kept.empty()) return;
  k.ids.swap(s.kept);
  k.narrowed(false);
}

// Weights of the kept tokens relative to their maximum m: w[j] = exp(z[ids[j]] - m); returns the
// sum. Reuses the log-prob pass's weights when z is the raw logits and nothing was removed.
double kept_weights(const float* z, const Kept& k, bool raw, Scratch& s, const VecKernels& vk,
                    const double*& w, double& m) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (k.dense && raw) {
    w = s.w_raw.data();
    m = static_cast<double>(float_of_order_key(vk.max_key(z, n)));
    return vk.sum(w, n);
  }
  m = static_cast<double>(float_of_order_key(vk.max_key_gather(z, k.ids.data(), n)));
  s.w.resize(static_cast<size_t>(n));
  vk.exp_shifted_gather(z, k.ids.data(), n, m, s.w.data());
  w = s.w.data();
  return vk.sum(w, n);
}

bool top_k_stage(const float* z, int64_t V, Kept& k, int64_t top_k, Scratch& s, const VecKernels& vk) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (top_k <= 0 || top_k >= n) return false;
  if (k.complete)
    top_candidates(z, V, top_k, true, s, vk, s.keys);
  else
    top_keys(n, top_k, [&](int64_t j) { return value_rank(z, k.ids[j]); }, s.keys);
  k.ids.resize(s.keys.size());
  for (size_t j = 0; j < s.keys.size(); ++j) k.ids[j] = rank_key_id(s.keys[j]);
  k.narrowed(false);
  return true;
}

// Locally typical sampling (Meister et al. 2022): order tokens by |surprise - entropy|, keep the
// fewest with mass >= typical_p. With d = max - z, surprise = log S + d and entropy =
// log S + sum(p d): the score is |d - sum(p d)|, rounded to float32 (ties then go to the lower id).
bool typical_stage(const float* z, Kept& k, bool raw, float typical_p, Scratch& s, const VecKernels& vk) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (!(typical_p < 1.0f) || n <= 1) return false;
  const double* w;
  double m;
  const double total = kept_weights(z, k, raw, s, vk, w, m);
  double wd = 0.0;
  for (int64_t j = 0; j < n; ++j) wd += w[j] * (m - static_cast<double>(z[k.ids[j]]));
  const double mean_d = wd / total;
  s.vkeys.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const float score = static_cast<float>(std::fabs((m - static_cast<double>(z[k.ids[j]])) - mean_d));
    s.vkeys[j] = ~float_order_key(score);  // smaller score = earlier
  }
  keep_fewest_reaching(k, s.vkeys.data(), w, static_cast<double>(typical_p) * total, s);
  return true;
}

// Nucleus (Holtzman et al. 2019): the fewest tokens in rank order with mass >= top_p.
bool top_p_stage(const float* z, Kept& k, bool raw, float top_p, Scratch& s, const VecKernels& vk) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (!(top_p < 1.0f) || n <= 1) return false;
  const double* w;
  double m;
  const double total = kept_weights(z, k, raw, s, vk, w, m);
  s.vkeys.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) s.vkeys[j] = float_order_key(z[k.ids[j]]);
  keep_fewest_reaching(k, s.vkeys.data(), w, static_cast<double>(top_p) * total, s);
  return true;
}

// min-p: keep tokens with p >= min_p * p_max, i.e. exp(z - max) >= min_p (order preserved).
void min_p_stage(const float* z, Kept& k, bool raw, float min_p, Scratch& s, const VecKernels& vk) {
  const int64_t n = static_cast<int64_t>(k.ids.size());
  if (!(min_p > 0.0f) || n <= 1) return;
  const double* w;
  double m;
  kept_weights(z, k, raw, s, vk, w, m);
  const double threshold = static_cast<double>(min_p);
  size_t out = 0;
  for (int64_t j = 0; j < n; ++j)
    if (w[j] >= threshold) k.ids[out++] = k.ids[j];
  if (static_cast<int64_t>(out) != n) k.narrowed(true);
  k.ids.resize(out);
}

void sort_ids(Kept& k, int64_t V, Scratch& s) {
  if (k.sorted) return;
  std::vector<int32_t>& ids = k.ids;
  if (static_cast<int64_t>(ids.size()) * 16 < V) {
    std::sort(ids.begin(), ids.end());
  } else {
    s.mask.assign(static_cast<size_t>(V), 0);
    for (int32_t id : ids) s.mask[id] = 1;
    size_t out = 0;
    for (int64_t i = 0; i < V; ++i)
      if (s.mask[i]) ids[out++] = static_cast<int32_t>(i);
  }
  k.sorted = true;
}

// The first j whose cumulative weight (in index order) exceeds u * total, or -1. Sums blocks
// of 64 first (vectorizable), walks the block sums, then scans inside one block.
int64_t find_draw(const double* v, int64_t n, double u, Scratch& s, const VecKernels& vk, double& total_out) {
  constexpr int64_t kBlock = 64;
  const int64_t nb = (n + kBlock - 1) / kBlock;
  s.block.resize(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) s.block[b] = vk.sum(v + b * kBlock, std::min(kBlock, n - b * kBlock));
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += s.block[b];
  if (!(total > 0.0) || !std::isfinite(total)) return -1;  // z / T overflowed
  total_out = total;
  const double target = u * total;
  double cum = 0.0;
  for (int64_t b = 0; b < nb; ++b) {
    if (cum + s.block[b] > target || b == nb - 1) {
      const int64_t end = std::min(n, (b + 1) * kBlock);
      int64_t last = -1;
      for (int64_t j = b * kBlock; j < end; ++j) {
        if (v[j] > 0.0) last = j;
        cum += v[j];
        if (cum > target) return j;
      }
      if (last >= 0) return last;  // rounding left the target just past this block's sum
    } else {
      cum += s.block[b];
    }
  }
  return -1;
}

// A chosen token and its probability under the distribution it was drawn from.
struct Choice {
  int32_t token;
  double prob;
};

// Temperature and the draw over the kept ids.
Choice draw(const float* z, Kept& k, bool raw, const RowParams& p, int64_t V, Scratch& s,
            const VecKernels& vk) {
  sort_ids(k, V, s);
  const int64_t n = static_cast<int64_t>(k.ids.size());
  const double* v;
  if (k.dense && raw && p.temperature == 1.0f) {
    v = s.w_raw.data();  // z / 1 == z: the log-prob pass already holds exp(z - max)
  } else {
    s.y.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) s.y[j] = z[k.ids[j]] / p.temperature;
    const double my = static_cast<double>(float_of_order_key(vk.max_key(s.y.data(), n)));
    s.w.resize(static_cast<size_t>(n));
    vk.exp_shifted(s.y.data(), n, my, s.w.data());
    v = s.w.data();
  }
  const double u = philox::uniform(p.seed, p.position, philox::kStreamDraw);
  double total = 0.0;
  const int64_t j = find_draw(v, n, u, s, vk, total);
  if (j < 0) return {best_by_rank(z, V, k, s, vk), 1.0};  // z / T overflowed: the argmax
  return {k.ids[j], v[j] / total};
}

Choice choose_token(const float* z, int64_t V, bool raw, const RowParams& p, Scratch& s,
                    const VecKernels& vk) {
  s.ids.resize(static_cast<size_t>(V));
  s.ids.resize(static_cast<size_t>(vk.finite_ids(z, V, s.ids.data())));
  if (s.ids.empty()) return {0, 0.0};
  Kept k{s.ids, true, static_cast<int64_t>(s.ids.size()) == V, true};
  const bool greedy = p.temperature == 0.0f;
  // Only typical-p can remove the best token; otherwise greedy needs no filtering.
  if (greedy && !(p.typical_p < 1.0f)) return {best_by_rank(z, V, k, s, vk), 1.0};
  top_k_stage(z, V, k, p.top_k, s, vk);
  typical_stage(z, k, raw, p.typical_p, s, vk);
  top_p_stage(z, k, raw, p.top_p, s, vk);
  min_p_stage(z, k, raw, p.min_p, s, vk);
  if (greedy) return {best_by_rank(z, V, k, s, vk), 1.0};
  return draw(z, k, raw, p, V, s, vk);
}

// The greedy token of an unmodified row: the first id of the largest candidate key (what
// best_by_rank finds over every finite token), or {0, 0} when no token is finite or +inf.
// `max_all` = max_key(x), in which a positive NaN outranks +inf: only then is a second pass needed.
Choice greedy_choice(const float* x, int64_t V, uint32_t max_all, const VecKernels& vk) {
  uint32_t best = max_all;
  if (best > kPosInfKey) {  // a NaN is the largest key: find the largest candidate instead
    best = 0;
    for (int64_t j = 0; j < V; ++j) best = std::max(best, candidate_key(x[j]));
  }
  if (best <= kNegInfKey) return {0, 0.0};  // every logit is -inf or NaN
  return {static_cast<int32_t>(vk.first_with_key(x, V, best)), 1.0};
}

}  // namespace
}  // namespace sampling

void greedy_tokens(const float* x_all, int64_t B, int64_t V, int64_t* token_ids, float* logprobs,
                   float* probs, bool with_logprobs) {
  using namespace sampling;
  require(B >= 0 && V > 0 && V < (int64_t{1} << 31), "vocabulary size in 1..2^31-1");
  const VecKernels& vk = cpu_vec_kernels();

#pragma omp parallel for schedule(dynamic, 1) if (B > 1)
  for (int64_t b = 0; b < B; ++b) {
    const float* x = x_all + b * V;
    // The same normalizer as sample_tokens_cpu (exp_sum == exp_shifted then sum, bit for bit).
    const uint32_t max_all = vk.max_key(x, V);
    const Choice choice = greedy_choice(x, V, max_all, vk);
    token_ids[b] = choice.token;
    probs[b] = static_cast<float>(choice.prob);
    if (with_logprobs) {
      const double xm = static_cast<double>(float_of_order_key(max_all));
      const double lse = xm + std::log(vk.exp_sum(x, V, xm));
      logprobs[b] = static_cast<float>(static_cast<double>(x[choice.token]) - lse);
    } else {
      logprobs[b] = std::numeric_limits<float>::quiet_NaN();
    }
  }
}

void greedy_tokens_cpu(const TensorView& logits, const TensorView& token_ids,
                       const TensorView& logprobs, const TensorView& probs) {
  require(logits.dtype == DType::F32 && logits.ndim == 2 && logits.is_contiguous(), "logits f32 [B, V]");
  const int64_t B = logits.size(0);
  require(token_ids.dtype == DType::I64 && logprobs.dtype == DType::F32 && probs.dtype == DType::F32 &&
              token_ids.numel() == B && logprobs.numel() == B && probs.numel() == B &&
              token_ids.is_contiguous() && logprobs.is_contiguous() && probs.is_contiguous(),
          "outputs: token_ids i64 [B], logprobs f32 [B], probs f32 [B]");
  greedy_tokens(logits.ptr<float>(), B, logits.size(1), token_ids.ptr<int64_t>(),
                logprobs.ptr<float>(), probs.ptr<float>(), true);
}

void sample_tokens_cpu(const TensorView& logits, const TensorView& fparams, const TensorView& iparams,
                       const TensorView& recent_ids, const TensorView& bias_rows,
                       const TensorView& bias_ids, const TensorView& bias_values,
                       const TensorView& token_mask, const TensorView& token_ids,
                       const TensorView& logprobs, const TensorView& top_ids,
                       const TensorView& top_logprobs, const TensorView& probs) {
  using namespace sampling;
  require(logits.dtype == DType::F32 && logits.ndim == 2 && logits.is_contiguous(), "logits f32 [B, V]");
  const int64_t B = logits.size(0), V = logits.size(1);
  const int64_t N = recent_ids.size(1), K = bias_rows.size(0), n_top = top_ids.size(1);
  require(V > 0 && V < (int64_t{1} << 31), "vocabulary size in 1..2^31-1");
  const VecKernels& vk = cpu_vec_kernels();
  const float* x_all = logits.ptr<float>();
  const float* fp = fparams.ptr<float>();
  const int64_t* ip = iparams.ptr<int64_t>();
  const int64_t* recent = recent_ids.ptr<int64_t>();
  const int64_t* brow = bias_rows.ptr<int64_t>();
  const int64_t* bid = bias_ids.ptr<int64_t>();
  const float* bval = bias_values.ptr<float>();
  const int64_t W = token_mask.size(1);
  require(W == 0 || (token_mask.dtype == DType::I32 && token_mask.is_contiguous() && W * 32 >= V),
          "token_mask int32 [B, ceil(V / 32)] or [B, 0]");
  const int32_t* mask = W ? token_mask.ptr<int32_t>() : nullptr;

#pragma omp parallel for schedule(dynamic, 1) if (B > 1)
  for (int64_t b = 0; b < B; ++b) {
    Scratch& s = thread_scratch();
    const float* x = x_all + b * V;
    const float* f = fp + b * kNumFParams;
    const int64_t* in = ip + b * kNumIParams;
    const RowParams p = {f[kTemperature], f[kTopP], f[kMinP], f[kTypicalP], f[kRepetitionPenalty],
                         f[kFrequencyPenalty], f[kPresencePenalty], in[kTopK],
                         static_cast<uint64_t>(in[kSeed]), static_cast<uint64_t>(in[kPosition])};

    // The model's log-softmax normalizer; w_raw = exp(x - max x) is reused while z == x.
    const double xm = static_cast<double>(float_of_order_key(vk.max_key(x, V)));
    s.w_raw.resize(static_cast<size_t>(V));
    vk.exp_shifted(x, V, xm, s.w_raw.data());
    const double lse = xm + std::log(vk.sum(s.w_raw.data(), V));

    s.z.assign(x, x + V);
    float* z = s.z.data();
    const bool masked = mask != nullptr && apply_token_mask(z, V, mask + b * W, W);
    bool raw = !apply_penalties(z, V, recent + b * N, N, p, s.recent) && !masked;
    for (int64_t j = 0; j < K; ++j) {
      if (brow[j] == b && bid[j] >= 0 && bid[j] < V) {
        z[bid[j]] += bval[j];
        raw = false;
      }
    }
    Choice choice = choose_token(z, V, raw, p, s, vk);
    if (choice.token < 0 || choice.token >= V) choice = {0, 0.0};  // never reached; never out of bounds
    const int32_t token = choice.token;

    token_ids.ptr<int64_t>()[b] = token;
    probs.ptr<float>()[b] = static_cast<float>(choice.prob);
    logprobs.ptr<float>()[b] = static_cast<float>(static_cast<double>(x[token]) - lse);
    if (n_top > 0) {
      top_candidates(x, V, n_top, false, s, vk, s.keys);
      for (int64_t j = 0; j < n_top; ++j) {
        const int32_t id = rank_key_id(s.keys[j]);
        top_ids.ptr<int64_t>()[b * n_top + j] = id;
        top_logprobs.ptr<float>()[b * n_top + j] = static_cast<float>(static_cast<double>(x[id]) - lse);
      }
    }
  }
}

}  // namespace pyllm
