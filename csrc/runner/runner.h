// A whole decoder stack run from C++: the model's forward pass as one call per step.
//
// The Python model (pyllm/model/gpt.py) is the meaning; this file runs the same kernels in the
// same order on the same numbers, so its output is the op-by-op path's bit for bit. What it
// removes is the Python between the kernels (module calls, op dispatch, tensor allocations,
// per-layer checks): the weights' addresses, the config and the scratch buffers are set up
// once when the model is loaded, and each step passes only its token ids and metadata.
//
// Ownership: every pointer here is borrowed from tensors the Python side keeps alive for the
// runner's lifetime (pyllm/model/fast.py). The step's metadata is checked in `forward` before
// any kernel runs (a std::invalid_argument, i.e. a Python ValueError, names what is wrong), so
// the kernels, which trust their arguments, never read or write out of bounds.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace pyllm {

// One block of a weight matrix: `rows` output rows in a GGML format (see quant/qlinear.h),
// written at output column `col0` of the layer's result; `bias` [rows] or null.
struct RunnerLinearPart {
  const uint8_t* w = nullptr;
  int qtype = 0;
  int64_t rows = 0;
  int64_t col0 = 0;
  const float* bias = nullptr;
  const uint8_t* packed = nullptr;  // the int8 kernel's panels (owned by the Runner), or null
};

// y[T, out] = x[T, in] @ W.T + b; usually one part (the fused QKV / gate-up matrix), several when
// the file stores the pieces in different formats.
struct RunnerLinear {
  std::vector<RunnerLinearPart> parts;
  int64_t in = 0, out = 0;
};

struct RunnerNorm {
  const float* weight = nullptr;
  const float* bias = nullptr;  // LayerNorm only (may be null)
  bool layer = false;           // LayerNorm, else RMSNorm
  float eps = 1e-5f;
};

struct RunnerLayer {
  RunnerNorm attn_norm, mlp_norm;
  RunnerLinear qkv, o, up, down;
  int64_t window = 0;  // sliding window (0: full attention)
};

// A row table [rows, cols] in a GGML format (the token or position embedding).
struct RunnerTable {
  const uint8_t* data = nullptr;
  int qtype = 0;
  int64_t rows = 0, cols = 0;
};

struct RunnerConfig {
  int64_t n_embd = 0, n_head = 0, n_kv_head = 0, head_dim = 0, n_ff = 0;
  int64_t vocab = 0;
  int64_t max_position = 0;  // positions must lie below it (cos_sin and pos_embed have >= rows)
  bool swiglu = true;      // else GELU (tanh)
  bool rope = true;        // else learned positions (pos_embed)
  bool neox = true;        // RoPE pair layout
  int64_t rotary_dim = 0;  // columns of cos_sin
  const float* cos_sin = nullptr;  // [max_position, rotary_dim]
  float scale = 1.0f;      // attention scale
};

// The paged KV-cache: one K and one V pool a layer, [num_blocks, block_size, Hkv, D], one dtype.
struct RunnerCache {
  std::vector<void*> k, v;
  int64_t num_blocks = 0, block_size = 0;
  int dtype = 0;  // 0 f32, 1 f16, 2 bf16
};

// One step's flattened batch (the fields of AttentionMetadata, contiguous int arrays).
struct RunnerStep {
  const int64_t* ids = nullptr;        // [T]
  const int64_t* positions = nullptr;  // [T]
  const int64_t* slots = nullptr;      // [T]
  const int32_t* query_start = nullptr;  // [B+1]
  const int32_t* context_lens = nullptr; // [B]
  const int32_t* block_tables = nullptr; // [B, max_blocks]
  int64_t T = 0, B = 0, max_blocks = 0;
  const int64_t* rows = nullptr;  // logits rows [R] (indices into T); null: every row
  int64_t R = 0;
};

class Runner {
 public:
  explicit Runner(const RunnerConfig& cfg) : cfg_(cfg) {}

  void set_embedding(const RunnerTable& tokens, const RunnerTable* positions);
  void add_layer(const RunnerLayer& layer);
  void set_head(const RunnerNorm& norm_f, const RunnerLinear& lm_head);
  void set_cache(const RunnerCache& cache);
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  // Opt in to the int8-activation qlinear (quant/qlinear_int8.h) for the block-typed matrices:
  // faster on many tokens, no longer bit-identical to the op-by-op model. On an AVX-512 CPU the
  // first switch-on packs those matrices' panels ahead of time (as many bytes again as their
  // GGUF blocks), which makes the int8 kernels pay from one token on.
  void set_int8_activations(bool on);
  bool int8_activations() const { return int8_act_; }
  // Bytes of the panels packed so far: while int8 is on, the matrices they cover are read from
  // them only, never from their source blocks.
  int64_t packed_bytes() const { return packed_bytes_; }

  // Optional per-kernel timing (off by default): seconds spent in each kind of kernel since the
  // last reset, for profiling (bench/decode_profile.py).
  enum Kind { kEmbed, kNorm, kQkv, kRope, kCacheWrite, kAttention, kOProj, kUpProj, kActivation,
              kDownProj, kLmHead, kOther, kKinds };
  static const char* kind_name(int k);
  void set_profiling(bool on) { profiling_ = on; }
  void reset_profile() { for (double& t : seconds_) t = 0.0; calls_ = 0; }
  double profile_seconds(int k) const { return seconds_[k]; }
  int64_t profile_calls() const { return calls_; }

  // Logits [R, vocab] of the step's rows into `logits` (float32, contiguous).
  void forward_logits(const RunnerStep& step, float* logits);
  // The final residual stream [T, n_embd] (before the last norm) into `hidden`.
  void forward_hidden(const RunnerStep& step, float* hidden);

 private:
  void check(const RunnerStep& step) const;
  void tick(Kind k);  // charge the time since the last tick to k (when profiling)
  void ensure(int64_t T);
  void run_stack(const RunnerStep& step);  // leaves the final residual stream in hid_
  void linear(const RunnerLinear& lin, const float* x, float* y, int64_t T) const;
  void norm(const RunnerNorm& n, const float* x, float* y, int64_t T) const;

  bool profiling_ = false;
  bool int8_act_ = false;
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> packed_;  // panels the parts' `packed` point into
  int64_t packed_bytes_ = 0;
  void pack_int8(RunnerLinear& lin);
  double seconds_[kKinds] = {};
  int64_t calls_ = 0;
  int64_t last_tick_ = 0;
  std::mutex mu_;  // one step at a time (the scratch is shared)
  RunnerConfig cfg_;
  RunnerTable tok_, pos_;
  bool has_pos_ = false;
  std::vector<RunnerLayer> layers_;
  RunnerNorm norm_f_;
  RunnerLinear head_;
  bool has_head_ = false;
  RunnerCache cache_;

  // Scratch for up to cap_ tokens, grown when a bigger step comes.
  int64_t cap_ = 0;
  std::vector<float> x_, h_, y_, res_a_, res_b_, sel_, qkv_, q_, kg_, k_, v_, att_, up_, act_;
  const float* final_res_ = nullptr;  // the residual stream after run_stack (x_ + it = hidden)
};

}  // namespace pyllm
