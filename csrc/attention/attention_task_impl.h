// The inner loop of CPU paged attention for one task (see attention.h), written once and
// instantiated per instruction set: each *_cpu.cpp / *_avx2.cpp / *_avx512.cpp file includes this
// inside an anonymous namespace, after defining an `Ops` struct with
//   float dot(const float* a, const float* b, int64_t n)
//   void axpy(float alpha, const float* x, float* y, int64_t n)     // y += alpha * x
//   void scal(float* y, float s, int64_t n)                         // y *= s
//   void f16_rows(const uint16_t* src, int64_t src_stride, float* dst, int64_t rows, int64_t n)
//   void bf16_rows(const uint16_t* src, int64_t src_stride, float* dst, int64_t rows, int64_t n)
// Nothing here has external linkage and nothing uses the standard library, so code compiled with
// AVX2/AVX-512 flags can never be picked by the linker for a baseline caller.
//
// Online softmax (flash-attention style): keys are walked in tiles of at most kAttnTile positions
// that never cross a cache block. Per tile, each K row is loaded (converted once for f16/bf16
// caches) and dotted with every query row of the GQA group that may see it; each row's running
// max m and sum l are updated, its accumulator rescaled when the max grows; then each V row is
// added into every row that sees it. Positions a row may not see are skipped, never multiplied
// by zero (0 * NaN is NaN), and no position outside [task.c0, task.c1) is read.

template <class Ops>
void attention_task(const AttnShape& sh, const AttnTask& task, int64_t pos0, const AttnScratch& sc) {
  const int64_t d = sh.d, group = sh.group, bs = sh.block_size;
  const int64_t rows = (task.i1 - task.i0) * group;
  const int64_t row_stride = sh.hkv * d;  // elements between consecutive positions of one head
  const int32_t* table = sh.block_tables + task.b * sh.max_blocks;

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = pos0 + r / group;
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
    const int64_t off = p % bs;
    int64_t n = bs - off;
    if (n > kAttnTile) n = kAttnTile;
    if (p + n > task.c1) n = task.c1 - p;
    const int64_t p1 = p + n;
    const int64_t base = ((static_cast<int64_t>(table[p / bs]) * bs + off) * sh.hkv + task.g) * d;

    // Rows that see some position of this tile: [ra, rb). lo and hi never decrease with r.
    int64_t ra = 0, rb = rows;
    while (ra < rows && sc.hi[ra] <= p) ++ra;
    while (rb > ra && sc.lo[rb - 1] >= p1) --rb;
    if (ra >= rb) { p = p1; continue; }

    // Scores s[r, j] = q_r . k_j for the positions row r sees.
    const float* krows;
    int64_t kstride;
    if (sh.cache_dtype == 0) {
      krows = static_cast<const float*>(sh.k_cache) + base;
      kstride = row_stride;
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(sh.k_cache) + base;
      if (sh.cache_dtype == 1) Ops::f16_rows(src, row_stride, sc.kt, n, d);
      else Ops::bf16_rows(src, row_stride, sc.kt, n, d);
      krows = sc.kt;
      kstride = d;
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* krow = krows + j * kstride;
      const int64_t pj = p + j;
      for (int64_t r = ra; r < rb; ++r) {
        if (pj < sc.lo[r] || pj >= sc.hi[r]) continue;
        sc.s[r * kAttnTile + j] = Ops::dot(sc.q + r * d, krow, d);
      }
    }

    // Online softmax update, row by row; s becomes exp(s - m).
    for (int64_t r = ra; r < rb; ++r) {
      const int64_t a = (sc.lo[r] > p ? sc.lo[r] : p) - p;
      const int64_t e = (sc.hi[r] < p1 ? sc.hi[r] : p1) - p;
      if (a >= e) continue;
      float* s = sc.s + r * kAttnTile;
      float mt = s[a];
      for (int64_t j = a + 1; j < e; ++j) mt = s[j] > mt ? s[j] : mt;
      if (mt > sc.m[r]) {
        if (sc.m[r] != -__builtin_inff()) {
          const float corr = __builtin_expf(sc.m[r] - mt);
          sc.l[r] *= corr;
          Ops::scal(sc.acc + r * d, corr, d);
        }
        sc.m[r] = mt;
      }
      const float m = sc.m[r];
      float sum = 0.0f;
      for (int64_t j = a; j < e; ++j) {
        const float pr = __builtin_expf(s[j] - m);
        s[j] = pr;
        sum += pr;
      }
      sc.l[r] += sum;
    }

    // acc_r += p[r, j] * v_j for the positions row r sees.
    const float* vrows;
    int64_t vstride;
    if (sh.cache_dtype == 0) {
      vrows = static_cast<const float*>(sh.v_cache) + base;
      vstride = row_stride;
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(sh.v_cache) + base;
      if (sh.cache_dtype == 1) Ops::f16_rows(src, row_stride, sc.vt, n, d);
      else Ops::bf16_rows(src, row_stride, sc.vt, n, d);
      vrows = sc.vt;
      vstride = d;
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* vrow = vrows + j * vstride;
      const int64_t pj = p + j;
      for (int64_t r = ra; r < rb; ++r) {
        if (pj < sc.lo[r] || pj >= sc.hi[r]) continue;
        Ops::axpy(sc.s[r * kAttnTile + j], vrow, sc.acc + r * d, d);
      }
    }
    p = p1;
  }
}
