// Varlen paged attention (prefill and decode in one op) over the paged KV-cache.
//
// q [T, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D] (f32/f16/bf16, contiguous);
// query_start [B+1], context_lens [B], block_tables [B, max_blocks] (int32); out [T, Hq, D] in
// q's dtype. Query i of sequence b (q_len rows) sits at position context_len - q_len + i and sees
// cache positions <= pos (and > pos - sliding_window when sliding_window > 0). Query head h reads
// KV head h / (Hq / Hkv). The metadata was validated in pyllm/ops/attention.py: every position
// the kernels touch lies inside its sequence's context, so unused cache slots are never read.
#pragma once

#include <cstdint>

#include "common/tensor_view.h"

namespace pyllm {

void paged_attention_cpu(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                         const TensorView& query_start, const TensorView& context_lens,
                         const TensorView& block_tables, const TensorView& out, float scale,
                         int64_t sliding_window);
// The same on raw addresses of contiguous tensors, for the decode hot path (building seven
// TensorViews costs more than a short decode's whole kernel). out has q's dtype. dtype codes as
// TensorView's: 0 f32, 1 f16, 2 bf16.
void paged_attention_cpu_ptr(uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t query_start,
                             uintptr_t context_lens, uintptr_t block_tables, uintptr_t out, int64_t T,
                             int64_t hq, int64_t hkv, int64_t d, int64_t block_size, int64_t B,
                             int64_t max_blocks, int q_dtype, int cache_dtype, float scale,
                             int64_t sliding_window);

#ifdef PYLLM_WITH_CUDA
// Floats of scratch the CUDA kernel needs for its split-K partial results (0 when it splits
// nothing); the caller allocates them on the device. `max_context` bounds any context length
// (block_tables' columns times block_size), so the grid depends on shapes only (graph-safe).
int64_t paged_attention_cuda_workspace(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t max_context);
void paged_attention_cuda(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                          const TensorView& query_start, const TensorView& context_lens,
                          const TensorView& block_tables, const TensorView& out, float scale,
                          int64_t sliding_window, const TensorView& workspace, uintptr_t stream);
#endif

// ---- internals shared by the CPU driver and its per-ISA inner loops -------------------------

// One unit of CPU work: queries [i0, i1) of sequence b (indices within the sequence), KV heads
// [g, g + ng), cache positions [c0, c1). Rows are grouped by KV head, then query, then head in the
// group: r = (kv - g) * rows_g + (i - i0) * group + (h - kv * group), rows_g = (i1 - i0) * group.
// A task with every KV head (ng = Hkv: decode and short chunks) reads each tile's K and V rows of
// all heads, which lie next to each other in the cache, as one contiguous range.
struct AttnTask {
  int64_t b = 0, g = 0, ng = 1, i0 = 0, i1 = 0, c0 = 0, c1 = 0;
  int64_t partial = -1;  // slot in the split-K partial buffer, or -1: write the output directly

  int64_t rows_per_head(int64_t group) const { return (i1 - i0) * group; }
  int64_t rows(int64_t group) const { return rows_per_head(group) * ng; }
  // Element offset of row r's query (and output) row in q [T, Hq, D], for a chunk whose first
  // query is token row `row0`.
  int64_t qkv_offset(int64_t r, int64_t row0, int64_t group, int64_t hq, int64_t d) const {
    const int64_t rows_g = rows_per_head(group), kv = g + r / rows_g, rr = r % rows_g;
    return ((row0 + rr / group) * hq + kv * group + rr % group) * d;
  }
};

struct AttnShape {
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  int cache_dtype = 0;  // DType code: 0 f32, 1 f16, 2 bf16
  const int32_t* block_tables = nullptr;
  int64_t max_blocks = 0, block_size = 0, hkv = 0, d = 0, group = 0;
  int64_t sliding_window = 0;
};

// Per-thread scratch the inner loop works in (sizes in elements; rows = queries * group).
struct AttnScratch {
  const float* q = nullptr;  // [rows, d], already multiplied by the scale
  float* acc = nullptr;      // [rows, d] unnormalised output (out = acc / l)
  float* m = nullptr;        // [rows] running max
  float* l = nullptr;        // [rows] running sum of exp(s - m)
  float* s = nullptr;        // [rows, kTile] scores, then probabilities, of one tile
  float* kt = nullptr;       // [kTile, d] a K tile converted to float (f16/bf16 caches)
  float* vt = nullptr;       // [kTile, d] a V tile converted to float
  float* kT = nullptr;       // [round_up(d, 16), 16] up to 16 keys of a K tile, transposed
  int64_t* lo = nullptr;     // [rows] first visible position of each row
  int64_t* hi = nullptr;     // [rows] one past the last visible position
};

constexpr int64_t kAttnTile = 32;  // keys per tile (never crossing a cache block)
// Floats of AttnScratch::kT for head dim d.
inline int64_t attn_kt_floats(int64_t d) { return 16 * ((d + 15) / 16 * 16); }

// The online-softmax loop over one task's keys; leaves acc, m, l in the scratch.
// `pos0` is the position of query i0; row r's query sits at pos0 + r / group.
using AttnTaskFn = void (*)(const AttnShape& sh, const AttnTask& task, int64_t pos0,
                            const AttnScratch& sc);
void attention_task_baseline(const AttnShape& sh, const AttnTask& task, int64_t pos0,
                             const AttnScratch& sc);
void attention_task_avx2(const AttnShape& sh, const AttnTask& task, int64_t pos0,
                         const AttnScratch& sc);
void attention_task_avx512(const AttnShape& sh, const AttnTask& task, int64_t pos0,
                           const AttnScratch& sc);

}  // namespace pyllm
