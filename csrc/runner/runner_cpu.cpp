// The decoder stack in C++: the same kernels, in the same order, as pyllm/model/gpt.py's
// op-by-op forward (see runner.h). Each kernel splits its own work over the OpenMP threads.
#include "runner/runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "attention/attention.h"
#include "common/cpu_features.h"
#include "common/half.h"
#include "common/tensor_view.h"
#include "kv_cache/kv_cache.h"
#include "norm_rope/norm_rope.h"
#include "quant/qlinear.h"
#include "quant/qlinear_blocks.h"
#include "quant/qlinear_int8.h"

namespace pyllm {

namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// A contiguous float32 [rows, cols] view (what the small fused ops' kernels take).
TensorView view2d(const float* data, int64_t rows, int64_t cols) {
  TensorView v;
  v.data = const_cast<float*>(data);
  v.dtype = DType::F32;
  v.ndim = 2;
  v.shape[0] = rows;
  v.shape[1] = cols;
  v.stride[0] = cols;
  v.stride[1] = 1;
  return v;
}

TensorView view3d(const float* data, int64_t a, int64_t b, int64_t c) {
  TensorView v = view2d(data, a, b * c);
  v.ndim = 3;
  v.shape[1] = b;
  v.shape[2] = c;
  v.stride[0] = b * c;
  v.stride[1] = c;
  v.stride[2] = 1;
  return v;
}

TensorView view1d(const void* data, DType dtype, int64_t n) {
  TensorView v;
  v.data = const_cast<void*>(data);
  v.dtype = dtype;
  v.ndim = 1;
  v.shape[0] = n;
  v.stride[0] = 1;
  return v;
}

// Row `r` of a table, dequantized exactly as pyllm.weights.quant.dequantize / Tensor.float() do
// (one float32 product, and for q4_1 one sum, per weight).
void table_row(const RunnerTable& t, int64_t r, float* out) {
  const int64_t row_bytes = qlinear_row_bytes(t.qtype, t.cols);
  const uint8_t* p = t.data + r * row_bytes;
  switch (t.qtype) {
    case kQ4_0: case kQ4_1: case kQ8_0: {
      const int64_t cb = qchunk_bytes(t.qtype);
      for (int64_t c = 0; c < t.cols / kQBlock; ++c) dequant_chunk(t.qtype, p + c * cb, out + c * kQBlock);
      break;
    }
    case kQ5_0: case kQ5_1: case kQ4_K: case kQ5_K: case kQ6_K: {
      const int bw = superblock_weights(t.qtype);
      const int64_t bb = superblock_bytes(t.qtype);
      for (int64_t b = 0; b < t.cols / bw; ++b) superblock_decode(t.qtype, p + b * bb, out + b * bw);
      break;
    }
    case kQF16:
      for (int64_t j = 0; j < t.cols; ++j) out[j] = load_as_float(p, 1, j);
      break;
    case kQBF16:
      for (int64_t j = 0; j < t.cols; ++j) out[j] = load_as_float(p, 2, j);
      break;
    default:
      std::memcpy(out, p, static_cast<size_t>(t.cols) * sizeof(float));
  }
}

// The weight types the runner takes: every type with a CPU qlinear kernel.
bool runner_qtype(int qtype) { return qlinear_qtype_known(qtype) || qlinear_superblock_qtype(qtype); }

// Weights a block of the type holds (1 for the float types).
int64_t block_weights(int qtype) {
  if (qlinear_superblock_qtype(qtype)) return superblock_weights(qtype);
  return qtype == kQ4_0 || qtype == kQ4_1 || qtype == kQ8_0 ? kQBlock : 1;
}

// Columns [c0, c0 + n) of every row of x [T, ld] into out [T, n].
void gather_cols(const float* x, int64_t ld, int64_t c0, int64_t n, float* out, int64_t T) {
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(out + t * n, x + t * ld + c0, static_cast<size_t>(n) * sizeof(float));
}

void check_linear(const RunnerLinear& lin, int64_t in, int64_t out, const char* what) {
  if (lin.in != in || lin.out != out) fail(std::string("runner: ") + what + " has the wrong shape");
  int64_t covered = 0;
  for (const RunnerLinearPart& p : lin.parts) {
    if (!runner_qtype(p.qtype) || p.w == nullptr || p.rows < 0 || p.col0 != covered)
      fail(std::string("runner: ") + what + " has a bad part");
    if (in % block_weights(p.qtype))
      fail(std::string("runner: ") + what + ": in_features must be a whole number of the weight's blocks");
    covered += p.rows;
  }
  if (covered != out) fail(std::string("runner: ") + what + "'s parts do not cover its outputs");
}

void check_norm(const RunnerNorm& n, const char* what) {
  if (n.weight == nullptr) fail(std::string("runner: ") + what + " has no weight");
}

// A table of at least `rows` rows (the position table may be longer than a capped context).
void check_table(const RunnerTable& t, int64_t rows, int64_t cols, const char* what) {
  if (t.data == nullptr || t.rows < rows || t.cols != cols || !runner_qtype(t.qtype) || cols % block_weights(t.qtype))
    fail(std::string("runner: bad ") + what + " table");
}

}  // namespace

// ------------------------------------------------------------------ setup

const char* Runner::kind_name(int k) {
  static const char* names[kKinds] = {"embedding", "norm", "qkv_proj", "rope", "kv_cache_write",
                                      "attention", "o_proj", "up_proj", "activation", "down_proj",
                                      "lm_head", "other"};
  return k >= 0 && k < kKinds ? names[k] : "?";
}

void Runner::tick(Kind k) {
  if (!profiling_) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  if (k != kKinds) seconds_[k] += static_cast<double>(now - last_tick_) * 1e-9;
  last_tick_ = now;
}

void Runner::set_embedding(const RunnerTable& tokens, const RunnerTable* positions) {
  check_table(tokens, cfg_.vocab, cfg_.n_embd, "token embedding");
  tok_ = tokens;
  has_pos_ = positions != nullptr;
  if (has_pos_) {
    check_table(*positions, cfg_.max_position, cfg_.n_embd, "position embedding");
    pos_ = *positions;
  }
  if (cfg_.rope && (cfg_.cos_sin == nullptr || cfg_.rotary_dim < 2 || cfg_.rotary_dim % 2 ||
                    cfg_.rotary_dim > cfg_.head_dim))
    fail("runner: RoPE needs a cos_sin table with an even rotary_dim <= head_dim");
  if (!cfg_.rope && !has_pos_) fail("runner: a model without RoPE needs a position embedding");
}

void Runner::add_layer(const RunnerLayer& layer) {
  const int64_t C = cfg_.n_embd, Q = cfg_.n_head * cfg_.head_dim, KV = cfg_.n_kv_head * cfg_.head_dim;
  if (cfg_.n_kv_head <= 0 || cfg_.n_head % cfg_.n_kv_head) fail("runner: heads must be a multiple of KV heads");
  check_norm(layer.attn_norm, "attn_norm");
  check_norm(layer.mlp_norm, "mlp_norm");
  check_linear(layer.qkv, C, Q + 2 * KV, "qkv");
  check_linear(layer.o, Q, C, "o");
  check_linear(layer.up, C, (cfg_.swiglu ? 2 : 1) * cfg_.n_ff, "up");
  check_linear(layer.down, cfg_.n_ff, C, "down");
  if (layer.window < 0) fail("runner: sliding window must be >= 0");
  layers_.push_back(layer);
}

void Runner::set_head(const RunnerNorm& norm_f, const RunnerLinear& lm_head) {
  check_norm(norm_f, "norm_f");
  check_linear(lm_head, cfg_.n_embd, cfg_.vocab, "lm_head");
  norm_f_ = norm_f;
  head_ = lm_head;
  has_head_ = true;
}

void Runner::pack_int8(RunnerLinear& lin) {
  for (RunnerLinearPart& p : lin.parts) {
    if (p.packed || p.rows == 0 || !qlinear_int8_supported(p.qtype) || lin.in % kQBlock) continue;
    const int64_t bytes = qlinear_int8_packed_bytes(p.qtype, p.rows, lin.in);
    std::unique_ptr<uint8_t, FreeDeleter> buf(static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes))));
    if (!buf) throw std::bad_alloc();
    QLinearArgs a;
    a.w = p.w;
    a.ldw = qlinear_row_bytes(p.qtype, lin.in);
    a.K = lin.in;
    a.N = p.rows;
    a.qtype = p.qtype;
    qlinear_int8_pack_avx512(a, buf.get());
    p.packed = buf.get();
    packed_.push_back(std::move(buf));
    packed_bytes_ += bytes;
  }
}

void Runner::set_int8_activations(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  int8_act_ = on;
  if (!on || cpu_isa() != Isa::Avx512) return;
  for (RunnerLayer& l : layers_) {
    pack_int8(l.qkv);
    pack_int8(l.o);
    pack_int8(l.up);
    pack_int8(l.down);
  }
  if (has_head_) pack_int8(head_);
}

void Runner::set_cache(const RunnerCache& cache) {
  if (cache.k.size() != layers_.size() || cache.v.size() != layers_.size())
    fail("runner: need one KV cache per layer");
  if (cache.num_blocks < 0 || cache.block_size <= 0 || cache.dtype < 0 || cache.dtype > 2)
    fail("runner: bad KV cache geometry");
  cache_ = cache;
}

void Runner::ensure(int64_t T) {
  if (T <= cap_) return;
  const int64_t cap = std::max<int64_t>(T, 2 * cap_);
  const int64_t C = cfg_.n_embd, Q = cfg_.n_head * cfg_.head_dim, KV = cfg_.n_kv_head * cfg_.head_dim;
  const int64_t up = (cfg_.swiglu ? 2 : 1) * cfg_.n_ff;
  auto grow = [cap](std::vector<float>& b, int64_t width) { b.assign(static_cast<size_t>(cap * width), 0.f); };
  grow(x_, C);
  grow(h_, C);
  grow(y_, C);
  grow(res_a_, C);
  grow(res_b_, C);
  grow(sel_, C);
  grow(qkv_, Q + 2 * KV);
  grow(q_, Q);
  grow(kg_, KV);
  grow(k_, KV);
  grow(v_, KV);
  grow(att_, Q);
  grow(up_, up);
  grow(act_, cfg_.n_ff);
  cap_ = cap;
}

// ------------------------------------------------------------------ checks

void Runner::check(const RunnerStep& s) const {
  if (!has_head_ || layers_.empty()) fail("runner: the model is not fully set up");
  if (cache_.k.size() != layers_.size()) fail("runner: no KV cache set");
  if (s.T < 0 || s.B < 0 || s.max_blocks < 0 || s.R < 0) fail("runner: negative sizes");
  const int64_t T = s.T;
  if (T) {
    int64_t lo = s.ids[0], hi = s.ids[0], plo = s.positions[0], phi = s.positions[0], top = s.slots[0];
    for (int64_t t = 1; t < T; ++t) {
      lo = std::min(lo, s.ids[t]);
      hi = std::max(hi, s.ids[t]);
      plo = std::min(plo, s.positions[t]);
      phi = std::max(phi, s.positions[t]);
      top = std::max(top, s.slots[t]);
    }
    if (lo < 0 || hi >= cfg_.vocab)
      fail("token ids must lie in [0, " + std::to_string(cfg_.vocab) + "), got [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]");
    if (plo < 0 || phi >= cfg_.max_position)
      fail("positions must lie in [0, " + std::to_string(cfg_.max_position) + ") (the context length), got [" +
           std::to_string(plo) + ", " + std::to_string(phi) + "]");
    const int64_t capacity = cache_.num_blocks * cache_.block_size;
    if (top >= capacity)
      fail("slot_mapping holds slot " + std::to_string(top) + ", beyond the cache's " + std::to_string(capacity) +
           " slots (" + std::to_string(cache_.num_blocks) + " blocks of " + std::to_string(cache_.block_size) +
           ")");
  }
  if (s.B == 0) {
    if (T) fail("q has " + std::to_string(T) + " rows but there are no sequences");
  } else {
    const int32_t* qs = s.query_start;
    if (qs[0] != 0) fail("query_start must start at 0");
    if (qs[s.B] != T) fail("query_start must end at T = " + std::to_string(T) + " (q's rows)");
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t q_len = int64_t{qs[b + 1]} - qs[b], ctx = s.context_lens[b];
      if (q_len < 0) fail("query_start must not decrease");
      if (ctx < q_len)
        fail("context_lens must be >= each sequence's query length (query_start[b+1] - query_start[b]): the new "
             "tokens are in the cache");
      const int64_t used = (ctx + cache_.block_size - 1) / cache_.block_size;
      if (used > s.max_blocks)
        fail("context_lens needs more blocks than block_tables' " + std::to_string(s.max_blocks) + " columns of " +
             std::to_string(cache_.block_size) + "-token blocks");
      const int32_t* row = s.block_tables + b * s.max_blocks;
      for (int64_t j = 0; j < used; ++j)
        if (row[j] < 0 || row[j] >= cache_.num_blocks)
          fail("block_tables holds an entry outside [0, " + std::to_string(cache_.num_blocks) +
               ") among the blocks a sequence uses");
    }
  }
  if (s.rows)
    for (int64_t r = 0; r < s.R; ++r)
      if (s.rows[r] < 0 || s.rows[r] >= T) fail("logits_at holds a row outside [0, " + std::to_string(T) + ")");
}

// ------------------------------------------------------------------ the pieces

void Runner::linear(const RunnerLinear& lin, const float* x, float* y, int64_t T) const {
  for (const RunnerLinearPart& p : lin.parts) {
    if (p.rows == 0) continue;
    QLinearArgs a;
    a.x = x;
    a.w = p.w;
    a.bias = p.bias;
    a.out = y + p.col0;
    a.ldx = lin.in;
    a.ldw = qlinear_row_bytes(p.qtype, lin.in);
    a.ldo = lin.out;
    a.T = T;
    a.K = lin.in;
    a.N = p.rows;
    a.qtype = p.qtype;
    a.packed = p.packed;
    a.int8_act = int8_act_ && qlinear_int8_pays(p.qtype, T, p.packed != nullptr);
    qlinear_run(a);
  }
}

void Runner::norm(const RunnerNorm& n, const float* x, float* y, int64_t T) const {
  const int64_t C = cfg_.n_embd;
  const TensorView w = view1d(n.weight, DType::F32, C);
  if (n.layer) {
    const TensorView b = view1d(n.bias, DType::F32, C);
    layer_norm_cpu(view2d(x, T, C), w, n.bias ? &b : nullptr, view2d(y, T, C), n.eps);
  } else {
    rms_norm_cpu(view2d(x, T, C), w, view2d(y, T, C), n.eps);
  }
}

// out = norm(x + residual), residual_out = x + residual (Norm.add_forward).
static void add_norm(const RunnerNorm& n, const float* x, const float* residual, float* out, float* residual_out,
                     int64_t T, int64_t C) {
  const TensorView w = view1d(n.weight, DType::F32, C);
  if (!n.layer) {
    fused_add_rms_norm_cpu(view2d(x, T, C), view2d(residual, T, C), w, view2d(out, T, C),
                           view2d(residual_out, T, C), n.eps);
    return;
  }
  for (int64_t i = 0; i < T * C; ++i) residual_out[i] = x[i] + residual[i];
  const TensorView b = view1d(n.bias, DType::F32, C);
  layer_norm_cpu(view2d(residual_out, T, C), w, n.bias ? &b : nullptr, view2d(out, T, C), n.eps);
}

// ------------------------------------------------------------------ the stack

void Runner::run_stack(const RunnerStep& s) {
  const int64_t T = s.T, C = cfg_.n_embd, D = cfg_.head_dim;
  const int64_t Hq = cfg_.n_head, Hkv = cfg_.n_kv_head, Q = Hq * D, KV = Hkv * D, W = Q + 2 * KV;
  ensure(std::max<int64_t>(T, 1));
  tick(kKinds);
  float* x = x_.data();
  for (int64_t t = 0; t < T; ++t) table_row(tok_, s.ids[t], x + t * C);
  if (has_pos_) {
    float* p = h_.data();  // scratch row
    for (int64_t t = 0; t < T; ++t) {
      table_row(pos_, s.positions[t], p);
      for (int64_t j = 0; j < C; ++j) x[t * C + j] += p[j];
    }
  }
  tick(kEmbed);
  float* h = h_.data();
  float* y = y_.data();
  float* res = x;  // layer 0: the residual stream is the embeddings themselves
  auto other = [this](float* r) { return r == res_a_.data() ? res_b_.data() : res_a_.data(); };
  const TensorView positions = view1d(s.positions, DType::I64, T);
  const TensorView cos_sin = view2d(cfg_.cos_sin, cfg_.max_position, cfg_.rotary_dim);

  for (size_t l = 0; l < layers_.size(); ++l) {
    const RunnerLayer& L = layers_[l];
    if (l == 0) {
      norm(L.attn_norm, x, h, T);
    } else {
      float* next = other(res);
      add_norm(L.attn_norm, x, res, h, next, T, C);
      res = next;
    }
    tick(kNorm);
    // attention: fused QKV, RoPE, cache write, paged attention, output projection
    linear(L.qkv, h, qkv_.data(), T);
    tick(kQkv);
    if (cfg_.rope) {
      gather_cols(qkv_.data(), W, 0, Q, att_.data(), T);  // att_ holds q until attention writes it
      gather_cols(qkv_.data(), W, Q, KV, kg_.data(), T);
      rope_cpu(view3d(att_.data(), T, Hq, D), view3d(kg_.data(), T, Hkv, D), positions, cos_sin,
               view3d(q_.data(), T, Hq, D), view3d(k_.data(), T, Hkv, D), cfg_.neox);
    } else {
      gather_cols(qkv_.data(), W, 0, Q, q_.data(), T);
      gather_cols(qkv_.data(), W, Q, KV, k_.data(), T);
    }
    gather_cols(qkv_.data(), W, Q + KV, KV, v_.data(), T);
    tick(kRope);
    const uintptr_t kc = reinterpret_cast<uintptr_t>(cache_.k[l]);
    const uintptr_t vc = reinterpret_cast<uintptr_t>(cache_.v[l]);
    write_kv_cache_cpu_ptr(reinterpret_cast<uintptr_t>(k_.data()), reinterpret_cast<uintptr_t>(v_.data()), kc, vc,
                           reinterpret_cast<uintptr_t>(s.slots), T, KV, 0, cache_.dtype);
    tick(kCacheWrite);
    paged_attention_cpu_ptr(reinterpret_cast<uintptr_t>(q_.data()), kc, vc,
                            reinterpret_cast<uintptr_t>(s.query_start), reinterpret_cast<uintptr_t>(s.context_lens),
                            reinterpret_cast<uintptr_t>(s.block_tables), reinterpret_cast<uintptr_t>(att_.data()),
                            T, Hq, Hkv, D, cache_.block_size, s.B, s.max_blocks, 0, cache_.dtype, cfg_.scale,
                            L.window);
    tick(kAttention);
    linear(L.o, att_.data(), y, T);
    tick(kOProj);
    // MLP
    float* next = other(res);
    add_norm(L.mlp_norm, y, res, h, next, T, C);
    res = next;
    tick(kNorm);
    linear(L.up, h, up_.data(), T);
    tick(kUpProj);
    if (cfg_.swiglu)
      silu_mul_cpu(view2d(up_.data(), T, 2 * cfg_.n_ff), view2d(act_.data(), T, cfg_.n_ff));
    else
      gelu_tanh_cpu(view2d(up_.data(), T, cfg_.n_ff), view2d(act_.data(), T, cfg_.n_ff));
    tick(kActivation);
    linear(L.down, act_.data(), x, T);
    tick(kDownProj);
  }
  final_res_ = res;
}

void Runner::forward_hidden(const RunnerStep& s, float* hidden) {
  std::lock_guard<std::mutex> lock(mu_);
  check(s);
  if (s.T == 0) return;
  run_stack(s);
  ++calls_;
  const float* x = x_.data();
  for (int64_t i = 0; i < s.T * cfg_.n_embd; ++i) hidden[i] = x[i] + final_res_[i];
}

void Runner::forward_logits(const RunnerStep& s, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  check(s);
  const int64_t R = s.rows ? s.R : s.T, C = cfg_.n_embd;
  if (s.T == 0) return;
  ensure(std::max(s.T, R));  // before run_stack: growing would drop the residual stream
  run_stack(s);  // even for no rows: the step's K/V go into the cache
  ++calls_;
  if (R == 0) return;
  const float* x = x_.data();
  float* sel = sel_.data();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = s.rows ? s.rows[r] : r;
    for (int64_t j = 0; j < C; ++j) sel[r * C + j] = x[t * C + j] + final_res_[t * C + j];
  }
  norm(norm_f_, sel, h_.data(), R);
  tick(kNorm);
  linear(head_, h_.data(), logits, R);
  tick(kLmHead);
}

}  // namespace pyllm
