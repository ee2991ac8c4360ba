// pyllm._C entries of the sampling family's CUDA kernels (a CUDA build; the CUDA emulator in
// tools/cuda_emu builds them too). The stream comes from Python as an int:
// torch.cuda.current_stream().cuda_stream.
#ifdef PYLLM_WITH_CUDA
#include <pybind11/stl.h>

#include "bind_families.h"
#include "sampling/sampling.h"

namespace py = pybind11;

namespace pyllm {

void bind_sampling_cuda(py::module_& m) {
  m.def("sample_tokens_cuda", &sample_tokens_cuda, py::arg("logits"), py::arg("fparams"),
        py::arg("iparams"), py::arg("recent_ids"), py::arg("bias_rows"), py::arg("bias_ids"),
        py::arg("bias_values"), py::arg("token_mask"), py::arg("workspace"), py::arg("token_ids"), py::arg("logprobs"),
        py::arg("top_ids"), py::arg("top_logprobs"), py::arg("probs"), py::arg("stream"));
}

}  // namespace pyllm
#endif  // PYLLM_WITH_CUDA
