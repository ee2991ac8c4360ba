// pyllm._C entries of the attention family's CUDA kernels (a CUDA build; the CUDA emulator in
// tools/cuda_emu builds them too).
#ifdef PYLLM_WITH_CUDA
#include "attention/attention.h"
#include "bind_families.h"

namespace py = pybind11;

namespace pyllm {

void bind_attention_cuda(py::module_& m) {
  m.def("paged_attention_cuda_workspace", &paged_attention_cuda_workspace, py::arg("T"), py::arg("Hq"),
        py::arg("Hkv"), py::arg("D"), py::arg("max_context"),
        "Floats of device scratch paged_attention_cuda needs for its split-K partial results.");
  m.def("paged_attention_cuda", &paged_attention_cuda, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("query_start"), py::arg("context_lens"), py::arg("block_tables"), py::arg("out"),
        py::arg("scale"), py::arg("sliding_window"), py::arg("workspace"), py::arg("stream"));
}

}  // namespace pyllm
#endif  // PYLLM_WITH_CUDA
