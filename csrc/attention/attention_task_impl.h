// The inner loop of CPU paged attention for one task (see attention.h), written once and
// instantiated per instruction set: each *_cpu.cpp / *_avx2.cpp / *_avx512.cpp file includes this
// inside an anonymous namespace, after defining an `Ops` struct with (j ranges over [a, e),
// row j of a tile at rows + j * stride):
//   void scores_row(const float* q, const float* krows, int64_t kstride, int64_t a, int64_t e,
//                   int64_t d, float* s)                    // s[j] = q . k_j
//   float max_row(const float* s, int64_t a, int64_t e)     // max of s[j]
//   float exp_row(float* s, int64_t a, int64_t e, float m)  // s[j] = exp(s[j] - m); returns the sum
//   void pv_row(const float* s, const float* vrows, int64_t vstride, int64_t a, int64_t e,
//               int64_t d, float* acc)                      // acc += sum of s[j] * v_j
//   void scal(float* y, float s, int64_t n)                 // y *= s
//   void f16_rows(const uint16_t* src, int64_t src_stride, float* dst, int64_t rows, int64_t n)
//   void bf16_rows(const uint16_t* src, int64_t src_stride, float* dst, int64_t rows, int64_t n)
//                                                           // (f16_rows, bf16_rows: see kTiled)
// Nothing here has external linkage and nothing uses the standard library, so code compiled with
// AVX2/AVX-512 flags can never be picked by the linker for a baseline caller.
//
// Online softmax (flash-attention style): keys are walked in tiles of at most kAttnTile positions
// that never cross a cache block. A tile's K and V rows are converted once (f16/bf16 caches) for
// every query row of the GQA group. Row by row: scores over the positions the row sees, its
// running max m and sum l updated, its accumulator rescaled when the max grows; then the V rows
// it sees are added in. No position outside [task.c0, task.c1) is read.
//
// An `Ops` with `kTiled = true` works on whole tiles instead, so each K and V row is loaded once
// for all the task's rows and no score ends in a horizontal sum of its own. It reads K and V in
// the cache's own element type KV (float, Half or BHalf below), widening halves to float in
// registers: a half-precision cache then moves half the bytes and needs no conversion pass (no
// f16_rows / bf16_rows):
//   template <class KV>
//   void scores_tile(const float* q, int64_t rows, const KV* krows, int64_t kstride, int64_t n,
//                    int64_t d, float* s, int64_t ld, float* kT)  // s[r * ld + j] = q_r . k_j, j < n
//   template <class KV>
//   void pv_tile(const float* p, int64_t ld, int64_t rows, const KV* vrows, int64_t vstride,
//                int64_t a, int64_t e, int64_t d, float* acc)     // acc_r += sum_{j in [a, e)} p[r, j] v_j
//   float softmax_row(float* s, int64_t a, int64_t e, int64_t n, float* m, float* l)
//       // the online-softmax step of one row over tile positions [a, e) (a < e <= n): m and l
//       // updated, s[j] = exp(s[j] - m) there and 0 elsewhere in [0, n); returns the factor
//       // e^(m_old - m_new) the row's accumulator must be scaled by
// (kT: scratch of 16 * round_up(d, 16) floats). Scores of positions a row may not see are then
// computed but never used, and their probabilities are set to exactly 0 before the PV product.
// That product then multiplies them by V rows of the tile, all inside [task.c0, task.c1) and so
// inside the context (never an unused, possibly NaN, slot): the reference's masked softmax does
// the same 0 * v.

// Cache elements as tiled Ops read them: IEEE half and bfloat16 bit patterns (distinct types,
// so the kernels can be overloaded on them).
struct Half {
  uint16_t bits;
};
struct BHalf {
  uint16_t bits;
};

// Row operations built from a vector struct's dot / axpy (scalar exp): enough for the baseline
// path; the AVX2 path has hand-blocked versions, the AVX-512 path tiled ones.
template <class Vec>
struct RowOps : Vec {
  static constexpr bool kTiled = false;
  static inline void scores_row(const float* q, const float* krows, int64_t kstride, int64_t a,
                                int64_t e, int64_t d, float* s) {
    for (int64_t j = a; j < e; ++j) s[j] = Vec::dot(q, krows + j * kstride, d);
  }
  static inline float max_row(const float* s, int64_t a, int64_t e) {
    float m = s[a];
    for (int64_t j = a + 1; j < e; ++j) m = s[j] > m ? s[j] : m;
    return m;
  }
  static inline float exp_row(float* s, int64_t a, int64_t e, float m) {
    float sum = 0.0f;
    for (int64_t j = a; j < e; ++j) {
      s[j] = __builtin_expf(s[j] - m);
      sum += s[j];
    }
    return sum;
  }
  static inline void pv_row(const float* s, const float* vrows, int64_t vstride, int64_t a, int64_t e,
                            int64_t d, float* acc) {
    for (int64_t j = a; j < e; ++j) Vec::axpy(s[j], vrows + j * vstride, acc, d);
  }
};

// Positions in the tile starting at p (< c1): up to the end of its block, kAttnTile, or c1.
inline int64_t tile_len(int64_t bs, int64_t p, int64_t c1) {
  int64_t n = bs - p % bs;
  if (n > kAttnTile) n = kAttnTile;
  return p + n > c1 ? c1 - p : n;
}

// Asks for the K and V rows of KV heads [g, g + ng) of the tile starting at position p (< c1) to
// be brought into the cache. Blocks lie in the pool in any order, so the hardware prefetcher
// cannot see a tile coming.
inline void prefetch_tile(const AttnShape& sh, const int32_t* table, int64_t p, int64_t c1, int64_t g,
                          int64_t ng) {
  const int64_t bs = sh.block_size, off = p % bs, n = tile_len(bs, p, c1);
  const int64_t esize = sh.cache_dtype == 0 ? 4 : 2;
  const int64_t row_bytes = sh.d * esize, stride = sh.hkv * row_bytes, span = ng * row_bytes;
  const int64_t base = ((static_cast<int64_t>(table[p / bs]) * bs + off) * sh.hkv + g) * row_bytes;
  const char* k = static_cast<const char*>(sh.k_cache) + base;
  const char* v = static_cast<const char*>(sh.v_cache) + base;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t b = 0; b < span; b += 64) {
      __builtin_prefetch(k + j * stride + b, 0, 3);
      __builtin_prefetch(v + j * stride + b, 0, 3);
    }
}

// The n rows of a K or V tile starting at element `base` of a cache, as the Ops reads them (row
// j at the result + j * *stride). Tiled Ops read the cache in place; the others get f16/bf16 rows
// converted into `scratch` ([n, d] floats).
template <class Ops, class KV>
inline const KV* tile_rows(const void* cache, int dtype, int64_t base, int64_t row_stride, int64_t n,
                           int64_t d, float* scratch, int64_t* stride) {
  if constexpr (!Ops::kTiled) {  // KV is float
    if (dtype != 0) {
      const uint16_t* src = static_cast<const uint16_t*>(cache) + base;
      if (dtype == 1) Ops::f16_rows(src, row_stride, scratch, n, d);
      else Ops::bf16_rows(src, row_stride, scratch, n, d);
      *stride = d;
      return scratch;
    }
  }
  *stride = row_stride;
  return static_cast<const KV*>(cache) + base;
}

// One tile (positions [p, p + n), starting at element `base` of the caches) for the rows of one
// KV head: the scratch pointers of `sc` point at that head's rows_g rows.
template <class Ops, class KV>
void tile_step(const AttnShape& sh, const AttnScratch& sc, int64_t rows, int64_t p, int64_t n, int64_t base) {
  const int64_t d = sh.d, p1 = p + n;
  const int64_t row_stride = sh.hkv * d;  // elements between consecutive positions of one head

  // Rows that see some position of this tile: [ra, rb). lo and hi never decrease with r.
  int64_t ra = 0, rb = rows;
  while (ra < rows && sc.hi[ra] <= p) ++ra;
  while (rb > ra && sc.lo[rb - 1] >= p1) --rb;
  if (ra >= rb) return;

  // Row r sees tile positions [a, e) (relative to p); nothing outside them is read.
  int64_t kstride, vstride;
  const KV* krows = tile_rows<Ops, KV>(sh.k_cache, sh.cache_dtype, base, row_stride, n, d, sc.kt, &kstride);

  // Scores, then the online softmax update; s becomes exp(s - m) (0 where the row sees nothing).
  if constexpr (Ops::kTiled)
    Ops::scores_tile(sc.q + ra * d, rb - ra, krows, kstride, n, d, sc.s + ra * kAttnTile, kAttnTile, sc.kT);
  int64_t amin = n, emax = 0;  // the union of the rows' visible ranges
  for (int64_t r = ra; r < rb; ++r) {
    const int64_t a = (sc.lo[r] > p ? sc.lo[r] : p) - p;
    const int64_t e = (sc.hi[r] < p1 ? sc.hi[r] : p1) - p;
    float* s = sc.s + r * kAttnTile;
    if (a >= e) {
      if constexpr (Ops::kTiled)
        for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
      continue;
    }
    if constexpr (Ops::kTiled) {
      const float corr = Ops::softmax_row(s, a, e, n, sc.m + r, sc.l + r);
      if (corr != 1.0f) Ops::scal(sc.acc + r * d, corr, d);
      amin = a < amin ? a : amin;
      emax = e > emax ? e : emax;
    } else {
      Ops::scores_row(sc.q + r * d, krows, kstride, a, e, d, s);
      const float mt = Ops::max_row(s, a, e);
      if (mt > sc.m[r]) {
        if (sc.m[r] != -__builtin_inff()) {
          const float corr = __builtin_expf(sc.m[r] - mt);
          sc.l[r] *= corr;
          Ops::scal(sc.acc + r * d, corr, d);
        }
        sc.m[r] = mt;
      }
      sc.l[r] += Ops::exp_row(s, a, e, sc.m[r]);
    }
  }

  // acc_r += sum over the positions row r sees of p[r, j] * v_j.
  const KV* vrows = tile_rows<Ops, KV>(sh.v_cache, sh.cache_dtype, base, row_stride, n, d, sc.vt, &vstride);
  if constexpr (Ops::kTiled) {
    if (amin < emax)
      Ops::pv_tile(sc.s + ra * kAttnTile, kAttnTile, rb - ra, vrows, vstride, amin, emax, d, sc.acc + ra * d);
  } else {
    for (int64_t r = ra; r < rb; ++r) {
      const int64_t a = (sc.lo[r] > p ? sc.lo[r] : p) - p;
      const int64_t e = (sc.hi[r] < p1 ? sc.hi[r] : p1) - p;
      if (a >= e) continue;
      Ops::pv_row(sc.s + r * kAttnTile, vrows, vstride, a, e, d, sc.acc + r * d);
    }
  }
}

template <class Ops, class KV>
void attention_loop(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  const int64_t d = sh.d, group = sh.group, bs = sh.block_size;
  const int64_t rows_g = task.rows_per_head(group), rows = task.rows(group);
  const int32_t* table = sh.block_tables + task.b * sh.max_blocks;

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = pos0 + (r % rows_g) / group;
    int64_t lo = 0;
    if (sh.sliding_window > 0 && pos - sh.sliding_window + 1 > 0) lo = pos - sh.sliding_window + 1;
    int64_t hi = pos + 1;
    sc.lo[r] = lo > task.c0 ? lo : task.c0;
    sc.hi[r] = hi < task.c1 ? hi : task.c1;
    sc.m[r] = -__builtin_inff();
    sc.l[r] = 0.0f;
    float* acc = sc.acc + r * d;
    for (int64_t k = 0; k < d; ++k) acc[k] = 0.0f;
  }

  for (int64_t p = task.c0; p < task.c1;) {
    const int64_t off = p % bs, n = tile_len(bs, p, task.c1), p1 = p + n;
    const int64_t base = ((static_cast<int64_t>(table[p / bs]) * bs + off) * sh.hkv + task.g) * d;
    if (p1 < task.c1) prefetch_tile(sh, table, p1, task.c1, task.g, task.ng);
    // Head by head over the same tile: their rows are interleaved in the cache, so the tile's
    // lines are fetched once for all of them.
    for (int64_t gl = 0; gl < task.ng; ++gl) {
      const int64_t r0 = gl * rows_g;
      AttnScratch hs = sc;
      hs.q = sc.q + r0 * d;
      hs.acc = sc.acc + r0 * d;
      hs.m = sc.m + r0;
      hs.l = sc.l + r0;
      hs.s = sc.s + r0 * kAttnTile;
      hs.lo = sc.lo + r0;
      hs.hi = sc.hi + r0;
      tile_step<Ops, KV>(sh, hs, rows_g, p, n, base + gl * d);
    }
    p = p1;
  }
}

template <class Ops>
void attention_task(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  if constexpr (Ops::kTiled) {
    if (sh.cache_dtype == 1) return attention_loop<Ops, Half>(sh, task, pos0, sc);
    if (sh.cache_dtype == 2) return attention_loop<Ops, BHalf>(sh, task, pos0, sc);
  }
  attention_loop<Ops, float>(sh, task, pos0, sc);
}
