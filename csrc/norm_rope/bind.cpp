// pyllm._C entries of the small fused ops on the CPU (the CUDA ones: bind_cuda.cpp).
#include <pybind11/pybind11.h>

#include "bind_families.h"
#include "norm_rope/norm_rope.h"
#include "norm_rope/row_kernels.h"

namespace py = pybind11;

namespace pyllm {

namespace {
const TensorView* opt(const py::object& v) { return v.is_none() ? nullptr : &v.cast<const TensorView&>(); }
}  // namespace

void bind_norm_rope(py::module_& m) {
  m.def("rms_norm_cpu", &rms_norm_cpu, py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("eps"));
  m.def("fused_add_rms_norm_cpu", &fused_add_rms_norm_cpu, py::arg("x"), py::arg("residual"),
        py::arg("weight"), py::arg("out"), py::arg("residual_out"), py::arg("eps"));
  m.def(
      "layer_norm_cpu",
      [](const TensorView& x, const TensorView& w, const py::object& bias, const TensorView& out, float eps) {
        layer_norm_cpu(x, w, opt(bias), out, eps);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias").none(true), py::arg("out"), py::arg("eps"));
  m.def("rope_cpu", &rope_cpu, py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("cos_sin"),
        py::arg("q_out"), py::arg("k_out"), py::arg("neox"));
  m.def("silu_mul_cpu", &silu_mul_cpu, py::arg("x"), py::arg("out"));
  m.def("gelu_tanh_cpu", &gelu_tanh_cpu, py::arg("x"), py::arg("out"));
  m.def("norm_rope_isa", [] { return std::string(norm_rope::row_kernels().isa); },
        "The instruction set the small fused ops' row kernels use now (follows cpu_isa()).");

}

}  // namespace pyllm
