// CPU paged attention: the driver (work split, threads, split-K merge) and the baseline inner loop.
//
// Work is cut into tasks (sequence, KV head, chunk of queries, range of cache positions). A task
// holds every query head of its GQA group, so each K/V row is loaded once for all of them. When
// there are too few tasks to keep the threads busy (decode of one or a few sequences) and the
// contexts are long, each task's key range is split across threads and the partial results
// (m, l, acc) are merged afterwards (flash-decoding).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "attention/attention.h"
#include "common/cpu_features.h"
#include "common/half.h"
#include "common/stall_guard.h"

namespace pyllm {

namespace {

struct BaselineVec {
  static inline float dot(const float* a, const float* b, int64_t n) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      s0 += a[i] * b[i];
      s1 += a[i + 1] * b[i + 1];
      s2 += a[i + 2] * b[i + 2];
      s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
  }
  static inline void axpy(float alpha, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }
  static inline void scal(float* y, float s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] *= s;
  }
  static inline void f16_rows(const uint16_t* src, int64_t stride, float* dst, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, src += stride, dst += n)
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_float(src[i]);
  }
  static inline void bf16_rows(const uint16_t* src, int64_t stride, float* dst, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, src += stride, dst += n)
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  }
};

#include "attention/attention_task_impl.h"

using BaselineOps = RowOps<BaselineVec>;

constexpr int64_t kRowsTarget = 48;     // query rows (queries x group heads) per task
constexpr int64_t kMinSplitKeys = 256;  // the fewest keys worth a task of their own
constexpr int64_t kParallelWork = 1 << 18;  // below this many multiply-adds, stay on one thread

// One thread for a while after a stalled parallel region (see common/stall_guard.h); the same
// task list runs either way (split or not), so the results do not change.
StallGuard& stall_guard() {
  static StallGuard guard;
  return guard;
}

AttnTaskFn pick_task_fn() {
  switch (cpu_isa()) {
    case Isa::Avx512: return attention_task_avx512;
    case Isa::Avx2: return attention_task_avx2;
    default: return attention_task_baseline;
  }
}

}  // namespace

void attention_task_baseline(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  attention_task<BaselineOps>(sh, task, pos0, sc);
}

namespace {

struct AttnCall {
  const void* q = nullptr;
  void* out = nullptr;
  int q_dtype = 0;  // out has the same dtype
  const int32_t* query_start = nullptr;
  const int32_t* context_lens = nullptr;
  int64_t T = 0, hq = 0, B = 0;
  float scale = 1.0f;
};

void run(const AttnCall& c, const AttnShape& sh);

}  // namespace

void paged_attention_cpu(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                         const TensorView& query_start, const TensorView& context_lens,
                         const TensorView& block_tables, const TensorView& out, float scale,
                         int64_t sliding_window) {
  require(q.ndim == 3 && k_cache.ndim == 4 && v_cache.ndim == 4 && block_tables.ndim == 2,
          "paged_attention: ranks");
  require(q.is_contiguous() && out.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              block_tables.is_contiguous(),
          "paged_attention: contiguity");
  require(query_start.dtype == DType::I32 && context_lens.dtype == DType::I32 &&
              block_tables.dtype == DType::I32 && k_cache.dtype == v_cache.dtype && out.dtype == q.dtype,
          "paged_attention: dtypes");
  const int64_t hq = q.shape[1], d = q.shape[2], hkv = k_cache.shape[2];
  require(hkv > 0 && hq % hkv == 0 && k_cache.shape[3] == d && out.numel() == q.numel(),
          "paged_attention: shapes");
  AttnCall c;
  c.q = q.data;
  c.out = out.data;
  c.q_dtype = static_cast<int>(q.dtype);
  c.query_start = query_start.ptr<int32_t>();
  c.context_lens = context_lens.ptr<int32_t>();
  c.T = q.shape[0];
  c.hq = hq;
  c.B = context_lens.shape[0];
  c.scale = scale;
  AttnShape sh;
  sh.k_cache = k_cache.data;
  sh.v_cache = v_cache.data;
  sh.cache_dtype = static_cast<int>(k_cache.dtype);
  sh.block_tables = block_tables.ptr<int32_t>();
  sh.max_blocks = block_tables.shape[1];
  sh.block_size = k_cache.shape[1];
  sh.hkv = hkv;
  sh.d = d;
  sh.group = hq / hkv;
  sh.sliding_window = sliding_window;
  run(c, sh);
}

void paged_attention_cpu_ptr(uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t query_start,
                             uintptr_t context_lens, uintptr_t block_tables, uintptr_t out, int64_t T,
                             int64_t hq, int64_t hkv, int64_t d, int64_t block_size, int64_t B,
                             int64_t max_blocks, int q_dtype, int cache_dtype, float scale,
                             int64_t sliding_window) {
  require(hkv > 0 && hq % hkv == 0 && block_size > 0 && q_dtype >= 0 && q_dtype <= 2 && cache_dtype >= 0 &&
              cache_dtype <= 2,
          "paged_attention: shapes or dtypes");
  AttnCall c;
  c.q = reinterpret_cast<const void*>(q);
  c.out = reinterpret_cast<void*>(out);
  c.q_dtype = q_dtype;
  c.query_start = reinterpret_cast<const int32_t*>(query_start);
  c.context_lens = reinterpret_cast<const int32_t*>(context_lens);
  c.T = T;
  c.hq = hq;
  c.B = B;
  c.scale = scale;
  AttnShape sh;
  sh.k_cache = reinterpret_cast<const void*>(k_cache);
  sh.v_cache = reinterpret_cast<const void*>(v_cache);
  sh.cache_dtype = cache_dtype;
  sh.block_tables = reinterpret_cast<const int32_t*>(block_tables);
  sh.max_blocks = max_blocks;
  sh.block_size = block_size;
  sh.hkv = hkv;
  sh.d = d;
  sh.group = hq / hkv;
  sh.sliding_window = sliding_window;
  run(c, sh);
}

namespace {

void run(const AttnCall& c, const AttnShape& sh) {
  const int64_t T = c.T, B = c.B, hq = c.hq, hkv = sh.hkv, d = sh.d;
  const int64_t sliding_window = sh.sliding_window;
  const float scale = c.scale;
  if (T == 0 || B == 0) return;
  const int32_t* qstart = c.query_start;
  const int32_t* ctxs = c.context_lens;

  // Base tasks: (sequence, chunk of queries, KV heads) over the keys the chunk can see. A chunk
  // whose rows for every KV head fit kRowsTarget (decode, short chunks) is one task for all
  // heads, reading each tile's rows of all heads as one contiguous range; longer chunks get a
  // task per KV head.
  const int64_t chunk = std::max<int64_t>(1, kRowsTarget / sh.group);
  std::vector<AttnTask> base;
  int64_t rows_max = 0;  // the most rows in one task
  for (int64_t b = 0; b < B; ++b) {
    const int64_t q_len = qstart[b + 1] - qstart[b], ctx = ctxs[b];
    for (int64_t i0 = 0; i0 < q_len; i0 += chunk) {
      const int64_t i1 = std::min(q_len, i0 + chunk);
      const int64_t first = ctx - q_len + i0;
      AttnTask t;
      t.b = b;
      t.i0 = i0;
      t.i1 = i1;
      t.c0 = sliding_window > 0 ? std::max<int64_t>(0, first - sliding_window + 1) : 0;
      t.c1 = ctx - q_len + i1;
      t.ng = t.rows_per_head(sh.group) * hkv <= kRowsTarget ? hkv : 1;
      rows_max = std::max(rows_max, t.rows(sh.group));
      for (int64_t g = 0; g < hkv; g += t.ng) {
        t.g = g;
        base.push_back(t);
      }
    }
  }

  if (base.empty()) return;

  // Threads only for enough work to pay for waking them (and for the merge when splitting).
  int64_t work = 0;
  for (const AttnTask& t : base) work += t.rows(sh.group) * (t.c1 - t.c0) * d;
  const int threads = work >= kParallelWork ? omp_get_max_threads() : 1;

  // Split long key ranges when the base tasks cannot fill the threads (flash-decoding).
  std::vector<AttnTask> tasks;
  std::vector<std::pair<int64_t, int64_t>> groups;  // [first, count) of tasks to merge
  int64_t n_partial = 0;
  const int64_t want = (2 * threads + static_cast<int64_t>(base.size()) - 1) / static_cast<int64_t>(base.size());
  for (const AttnTask& t : base) {
    const int64_t keys = t.c1 - t.c0;
    int64_t splits = threads > 1 ? std::min(want, keys / kMinSplitKeys) : 1;
    if (splits <= 1) {
      tasks.push_back(t);
      continue;
    }
    // Split points on block boundaries where possible, so tiles stay whole.
    int64_t per = (keys + splits - 1) / splits;
    per = (per + sh.block_size - 1) / sh.block_size * sh.block_size;
    const int64_t first = static_cast<int64_t>(tasks.size());
    for (int64_t c = t.c0; c < t.c1; c += per) {
      AttnTask s = t;
      s.c0 = c;
      s.c1 = std::min(t.c1, c + per);
      s.partial = n_partial++;
      tasks.push_back(s);
    }
    groups.emplace_back(first, static_cast<int64_t>(tasks.size()) - first);
  }

  const int64_t part_stride = rows_max * (d + 2);  // per split task: m[rows], l[rows], acc[rows, d]
  std::vector<float> partial(static_cast<size_t>(n_partial * part_stride));  // small: split tasks only
  const AttnTaskFn task_fn = pick_task_fn();
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  const int64_t n_groups = static_cast<int64_t>(groups.size());
  const int q_dtype = c.q_dtype, out_dtype = c.q_dtype;

  StallGuard& guard = stall_guard();
  const bool parallel = n_tasks > 1 && threads > 1 && !guard.solo();
  const double start = parallel ? now_s() : 0.0;
  double master_own = 0.0;  // seconds the master spent on tasks and merges of its own

#pragma omp parallel if (parallel)
  {
    const bool timed = parallel && omp_get_thread_num() == 0;
    // Per-thread scratch, kept between calls (OpenMP's threads persist): no allocation and no
    // zero-filling on the decode path once warmed up.
    static thread_local std::vector<float> fbuf;
    static thread_local std::vector<int64_t> ibuf;
    const size_t kv_tile = sh.cache_dtype == 0 ? 0 : static_cast<size_t>(kAttnTile * d);
    const size_t need =
        static_cast<size_t>(rows_max * (2 * d + 2 + kAttnTile) + attn_kt_floats(d)) + 2 * kv_tile;
    if (fbuf.size() < need) fbuf.resize(need);
    if (ibuf.size() < static_cast<size_t>(2 * rows_max)) ibuf.resize(2 * rows_max);
    float* const qbuf = fbuf.data();
    float* const acc = qbuf + rows_max * d;
    float* const m = acc + rows_max * d;
    float* const l = m + rows_max;
    AttnScratch sc;
    sc.q = qbuf;
    sc.acc = acc;
    sc.m = m;
    sc.l = l;
    sc.s = l + rows_max;
    sc.kt = sc.s + rows_max * kAttnTile;
    sc.vt = sc.kt + kv_tile;
    sc.kT = sc.vt + kv_tile;
    sc.lo = ibuf.data();
    sc.hi = ibuf.data() + rows_max;

#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_tasks; ++k) {
      const double t0 = timed ? now_s() : 0.0;
      const AttnTask& t = tasks[k];
      const int64_t q_len = qstart[t.b + 1] - qstart[t.b];
      const int64_t pos0 = ctxs[t.b] - q_len + t.i0;
      const int64_t row0 = qstart[t.b] + t.i0;  // first token row of the chunk
      const int64_t rows = t.rows(sh.group);
      // The task's query rows (see AttnTask for their order), scaled, as float.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = t.qkv_offset(r, row0, sh.group, hq, d);
        float* qr = qbuf + r * d;
        if (q_dtype == 0) {
          const float* qs = static_cast<const float*>(c.q) + src;
          for (int64_t j = 0; j < d; ++j) qr[j] = qs[j] * scale;
        } else {
          for (int64_t j = 0; j < d; ++j) qr[j] = load_as_float(c.q, q_dtype, src + j) * scale;
        }
      }
      task_fn(sh, t, pos0, sc);
      if (t.partial < 0) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t dst = t.qkv_offset(r, row0, sh.group, hq, d);
          const float inv = 1.0f / l[r];
          if (out_dtype == 0) {
            float* o = static_cast<float*>(c.out) + dst;
            for (int64_t j = 0; j < d; ++j) o[j] = acc[r * d + j] * inv;
          } else {
            for (int64_t j = 0; j < d; ++j) store_from_float(c.out, out_dtype, dst + j, acc[r * d + j] * inv);
          }
        }
      } else {
        float* part = partial.data() + t.partial * part_stride;
        std::memcpy(part, m, rows * sizeof(float));
        std::memcpy(part + rows_max, l, rows * sizeof(float));
        std::memcpy(part + 2 * rows_max, acc, rows * d * sizeof(float));
      }
      if (timed) master_own += now_s() - t0;
    }

    // Merge the split tasks' partial results: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
#pragma omp for schedule(dynamic, 1)
    for (int64_t gi = 0; gi < n_groups; ++gi) {
      const double t0 = timed ? now_s() : 0.0;
      const int64_t first = groups[gi].first, count = groups[gi].second;
      const AttnTask& t = tasks[first];
      const int64_t row0 = qstart[t.b] + t.i0;
      const int64_t rows = t.rows(sh.group);
      for (int64_t r = 0; r < rows; ++r) {
        float mx = -__builtin_inff();
        for (int64_t k = 0; k < count; ++k)
          mx = std::max(mx, partial[tasks[first + k].partial * part_stride + r]);
        float total = 0.f;
        float* a = acc;
        std::fill(a, a + d, 0.f);
        for (int64_t k = 0; k < count; ++k) {
          const float* part = partial.data() + tasks[first + k].partial * part_stride;
          if (part[r] == -__builtin_inff()) continue;  // this split saw none of row r's keys
          const float w = __builtin_expf(part[r] - mx);
          total += part[rows_max + r] * w;
          const float* pa = part + 2 * rows_max + r * d;
          for (int64_t j = 0; j < d; ++j) a[j] += pa[j] * w;
        }
        const int64_t dst = t.qkv_offset(r, row0, sh.group, hq, d);
        const float inv = 1.0f / total;
        for (int64_t j = 0; j < d; ++j) store_from_float(c.out, out_dtype, dst + j, a[j] * inv);
      }
      if (timed) master_own += now_s() - t0;
    }
  }
  // Everything but the master's own share counts as waiting: for workers to start, at the
  // barrier between tasks and merges, and at the end.
  if (parallel) guard.record(master_own, (now_s() - start) - master_own);
}

}  // namespace

}  // namespace pyllm
