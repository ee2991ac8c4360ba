#include <pybind11/stl.h>

#include "bind_families.h"
#include "sampling/sample_math.h"
#include "sampling/sampling.h"

namespace py = pybind11;

namespace pyllm {

void bind_sampling(py::module_& m) {
  m.def("sample_tokens_cpu", &sample_tokens_cpu, py::arg("logits"), py::arg("fparams"),
        py::arg("iparams"), py::arg("recent_ids"), py::arg("bias_rows"), py::arg("bias_ids"),
        py::arg("bias_values"), py::arg("token_mask"), py::arg("token_ids"), py::arg("logprobs"),
        py::arg("top_ids"), py::arg("top_logprobs"), py::arg("probs"),
        py::call_guard<py::gil_scoped_release>());
  m.def("greedy_tokens_cpu", &greedy_tokens_cpu, py::arg("logits"), py::arg("token_ids"),
        py::arg("logprobs"), py::arg("probs"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "greedy_tokens_ptr",
      [](uintptr_t logits, int64_t B, int64_t V, uintptr_t token_ids, uintptr_t logprobs,
         uintptr_t probs, bool with_logprobs) {
        greedy_tokens(reinterpret_cast<const float*>(logits), B, V,
                      reinterpret_cast<int64_t*>(token_ids), reinterpret_cast<float*>(logprobs),
                      reinterpret_cast<float*>(probs), with_logprobs);
      },
      py::arg("logits"), py::arg("B"), py::arg("V"), py::arg("token_ids"), py::arg("logprobs"),
      py::arg("probs"), py::arg("with_logprobs"), py::call_guard<py::gil_scoped_release>(),
      "greedy_tokens_cpu on data pointers (contiguous float32 logits [B, V]; int64 / float32 / "
      "float32 outputs [B]); the caller guarantees the layout. with_logprobs=False writes NaN "
      "log-probs and skips their float64 exp pass.");
  m.def(
      "philox4x32_10",
      [](const std::vector<uint32_t>& counter, const std::vector<uint32_t>& key) {
        if (counter.size() != 4 || key.size() != 2)
          throw std::invalid_argument("philox4x32_10 takes 4 counter words and 2 key words");
        philox::U32x4 ctr = {{counter[0], counter[1], counter[2], counter[3]}};
        const philox::U32x4 r = philox::philox4x32_10(ctr, key[0], key[1]);
        return std::vector<uint32_t>(r.v, r.v + 4);
      },
      py::arg("counter"), py::arg("key"),
      "Philox4x32-10 of a 4-word counter under a 2-word key, as the sampler kernels compute it.");
  m.def(
      "sampling_exp_nonpos", [](double x) { return sampling::exp_nonpos(x); }, py::arg("x"),
      "The sampler's exp(x) for x <= 0 (exposed for accuracy tests).");
}

}  // namespace pyllm
