#include "bind_families.h"
#include "kv_cache/kv_cache.h"

namespace py = pybind11;

namespace pyllm {

void bind_kv_cache(py::module_& m) {
  m.def("write_kv_cache_cpu", &write_kv_cache_cpu, py::arg("k"), py::arg("v"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slot_mapping"),
        "Scatter k, v [T, Hkv, D] into the caches by slot (negative slots skipped). Unchecked: "
        "call pyllm.ops.write_kv_cache_ unless the slots were validated.");
  m.def("write_kv_cache_cpu_ptr", &write_kv_cache_cpu_ptr, py::arg("k"), py::arg("v"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slot_mapping"), py::arg("T"), py::arg("row"), py::arg("src_dtype"),
        py::arg("cache_dtype"), "write_kv_cache_cpu on raw addresses (the validated hot path).");
}

}  // namespace pyllm
