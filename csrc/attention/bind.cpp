#include "attention/attention.h"
#include "bind_families.h"

namespace py = pybind11;

namespace pyllm {

void bind_attention(py::module_& m) {
  m.def("paged_attention_cpu", &paged_attention_cpu, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("query_start"), py::arg("context_lens"), py::arg("block_tables"), py::arg("out"),
        py::arg("scale"), py::arg("sliding_window"),
        "Varlen paged attention into out [T, Hq, D]. Unchecked: call pyllm.ops.paged_attention "
        "unless the metadata was validated (pyllm.ops.attention.check_attention_metadata).");
  m.def("paged_attention_cpu_ptr", &paged_attention_cpu_ptr, py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("query_start"), py::arg("context_lens"), py::arg("block_tables"),
        py::arg("out"), py::arg("T"), py::arg("Hq"), py::arg("Hkv"), py::arg("D"), py::arg("block_size"),
        py::arg("B"), py::arg("max_blocks"), py::arg("q_dtype"), py::arg("cache_dtype"), py::arg("scale"),
        py::arg("sliding_window"), "paged_attention_cpu on raw addresses (the validated hot path).");
}

}  // namespace pyllm
