// pyllm._C.Runner: the decoder stack set up once from Python (pyllm/model/fast.py), then one
// call per step. Pointers are plain integers (tensor.data_ptr()); the Python side keeps the
// tensors alive and has checked their shapes, dtypes and contiguity.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "bind_families.h"
#include "runner/runner.h"

namespace py = pybind11;

namespace pyllm {

namespace {

using NormArg = std::tuple<uintptr_t, uintptr_t, bool, float>;  // weight, bias (0 = none), layer, eps
using PartArg = std::tuple<uintptr_t, int, int64_t, uintptr_t>;  // weight, qtype, rows, bias (0 = none)
using LinearArg = std::tuple<int64_t, int64_t, std::vector<PartArg>>;  // in, out, parts
using TableArg = std::tuple<uintptr_t, int, int64_t, int64_t>;  // data, qtype, rows, cols

RunnerNorm to_norm(const NormArg& a) {
  RunnerNorm n;
  n.weight = reinterpret_cast<const float*>(std::get<0>(a));
  n.bias = reinterpret_cast<const float*>(std::get<1>(a));
  n.layer = std::get<2>(a);
  n.eps = std::get<3>(a);
  return n;
}

RunnerLinear to_linear(const LinearArg& a) {
  RunnerLinear lin;
  lin.in = std::get<0>(a);
  lin.out = std::get<1>(a);
  int64_t col = 0;
  for (const PartArg& p : std::get<2>(a)) {
    RunnerLinearPart part;
    part.w = reinterpret_cast<const uint8_t*>(std::get<0>(p));
    part.qtype = std::get<1>(p);
    part.rows = std::get<2>(p);
    part.col0 = col;
    part.bias = reinterpret_cast<const float*>(std::get<3>(p));
    col += part.rows;
    lin.parts.push_back(part);
  }
  return lin;
}

RunnerTable to_table(const TableArg& a) {
  RunnerTable t;
  t.data = reinterpret_cast<const uint8_t*>(std::get<0>(a));
  t.qtype = std::get<1>(a);
  t.rows = std::get<2>(a);
  t.cols = std::get<3>(a);
  return t;
}

RunnerStep to_step(uintptr_t ids, uintptr_t positions, uintptr_t slots, uintptr_t query_start,
                   uintptr_t context_lens, uintptr_t block_tables, int64_t T, int64_t B, int64_t max_blocks,
                   uintptr_t rows, int64_t R) {
  RunnerStep s;
  s.ids = reinterpret_cast<const int64_t*>(ids);
  s.positions = reinterpret_cast<const int64_t*>(positions);
  s.slots = reinterpret_cast<const int64_t*>(slots);
  s.query_start = reinterpret_cast<const int32_t*>(query_start);
  s.context_lens = reinterpret_cast<const int32_t*>(context_lens);
  s.block_tables = reinterpret_cast<const int32_t*>(block_tables);
  s.T = T;
  s.B = B;
  s.max_blocks = max_blocks;
  s.rows = reinterpret_cast<const int64_t*>(rows);
  s.R = R;
  return s;
}

}  // namespace

void bind_runner(py::module_& m) {
  py::class_<Runner>(m, "Runner", "The decoder stack as one C++ call per step (see pyllm/model/fast.py).")
      .def(py::init([](int64_t n_embd, int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t n_ff,
                       int64_t vocab, int64_t max_position, bool swiglu, bool rope, bool neox, int64_t rotary_dim,
                       uintptr_t cos_sin, double scale) {
             RunnerConfig c;
             c.n_embd = n_embd;
             c.n_head = n_head;
             c.n_kv_head = n_kv_head;
             c.head_dim = head_dim;
             c.n_ff = n_ff;
             c.vocab = vocab;
             c.max_position = max_position;
             c.swiglu = swiglu;
             c.rope = rope;
             c.neox = neox;
             c.rotary_dim = rotary_dim;
             c.cos_sin = reinterpret_cast<const float*>(cos_sin);
             c.scale = static_cast<float>(scale);
             return std::make_unique<Runner>(c);
           }),
           py::arg("n_embd"), py::arg("n_head"), py::arg("n_kv_head"), py::arg("head_dim"), py::arg("n_ff"),
           py::arg("vocab"), py::arg("max_position"), py::arg("swiglu"), py::arg("rope"), py::arg("neox"),
           py::arg("rotary_dim"), py::arg("cos_sin"), py::arg("scale"))
      .def(
          "set_embedding",
          [](Runner& r, const TableArg& tokens, const std::optional<TableArg>& positions) {
            if (positions) {
              const RunnerTable p = to_table(*positions);
              r.set_embedding(to_table(tokens), &p);
            } else {
              r.set_embedding(to_table(tokens), nullptr);
            }
          },
          py::arg("tokens"), py::arg("positions").none(true))
      .def(
          "add_layer",
          [](Runner& r, const NormArg& attn_norm, const LinearArg& qkv, const LinearArg& o, const NormArg& mlp_norm,
             const LinearArg& up, const LinearArg& down, int64_t window) {
            RunnerLayer l;
            l.attn_norm = to_norm(attn_norm);
            l.qkv = to_linear(qkv);
            l.o = to_linear(o);
            l.mlp_norm = to_norm(mlp_norm);
            l.up = to_linear(up);
            l.down = to_linear(down);
            l.window = window;
            r.add_layer(l);
          },
          py::arg("attn_norm"), py::arg("qkv"), py::arg("o"), py::arg("mlp_norm"), py::arg("up"), py::arg("down"),
          py::arg("window"))
      .def(
          "set_head", [](Runner& r, const NormArg& norm_f, const LinearArg& lm_head) {
            r.set_head(to_norm(norm_f), to_linear(lm_head));
          },
          py::arg("norm_f"), py::arg("lm_head"))
      .def(
          "set_cache",
          [](Runner& r, const std::vector<uintptr_t>& k, const std::vector<uintptr_t>& v, int64_t num_blocks,
             int64_t block_size, int dtype) {
            RunnerCache c;
            for (uintptr_t p : k) c.k.push_back(reinterpret_cast<void*>(p));
            for (uintptr_t p : v) c.v.push_back(reinterpret_cast<void*>(p));
            c.num_blocks = num_blocks;
            c.block_size = block_size;
            c.dtype = dtype;
            r.set_cache(c);
          },
          py::arg("k"), py::arg("v"), py::arg("num_blocks"), py::arg("block_size"), py::arg("dtype"))
      .def_property_readonly("num_layers", &Runner::num_layers)
      .def_property("int8_activations", &Runner::int8_activations, &Runner::set_int8_activations,
                    "Use the int8-activation qlinear for Q4_0/Q4_1/Q8_0 matrices (approximate; off by default).")
      .def_property_readonly("packed_bytes", &Runner::packed_bytes,
                             "Bytes of int8 panels packed ahead of time (AVX-512); while int8 is on, the "
                             "block matrices they cover are not read from their source.")
      .def("set_profiling", &Runner::set_profiling, py::arg("on"),
           "Time every kernel call by kind (off by default; costs a clock read per kernel).")
      .def("reset_profile", &Runner::reset_profile)
      .def(
          "profile",
          [](const Runner& r) {
            py::dict d;
            for (int k = 0; k < Runner::kKinds; ++k) d[Runner::kind_name(k)] = r.profile_seconds(k);
            d["steps"] = r.profile_calls();
            return d;
          },
          "Seconds spent in each kind of kernel since reset_profile, and the steps run.")
      .def(
          "forward_logits",
          [](Runner& r, uintptr_t ids, uintptr_t positions, uintptr_t slots, uintptr_t query_start,
             uintptr_t context_lens, uintptr_t block_tables, int64_t T, int64_t B, int64_t max_blocks, uintptr_t rows,
             int64_t R, uintptr_t out) {
            const RunnerStep s =
                to_step(ids, positions, slots, query_start, context_lens, block_tables, T, B, max_blocks, rows, R);
            py::gil_scoped_release release;
            r.forward_logits(s, reinterpret_cast<float*>(out));
          },
          "Logits [R, vocab] (every row when rows is 0: R = T) of one step into out (float32).")
      .def(
          "forward_hidden",
          [](Runner& r, uintptr_t ids, uintptr_t positions, uintptr_t slots, uintptr_t query_start,
             uintptr_t context_lens, uintptr_t block_tables, int64_t T, int64_t B, int64_t max_blocks,
             uintptr_t out) {
            const RunnerStep s =
                to_step(ids, positions, slots, query_start, context_lens, block_tables, T, B, max_blocks, 0, 0);
            py::gil_scoped_release release;
            r.forward_hidden(s, reinterpret_cast<float*>(out));
          },
          "The final residual stream [T, n_embd] of one step into out (float32).");
}

}  // namespace pyllm
