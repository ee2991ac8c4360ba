#include "bind_families.h"
#include "norm_rope/norm_rope.h"

namespace py = pybind11;

namespace pyllm {

void bind_norm_rope(py::module_& m) {
  m.def("rms_norm_cpu", &rms_norm_cpu, py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("eps"));
  m.def("fused_add_rms_norm_cpu", &fused_add_rms_norm_cpu, py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("out"), py::arg("residual_out"), py::arg("eps"));
}

}  // namespace pyllm
