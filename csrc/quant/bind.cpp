#include <pybind11/pybind11.h>

#include "bind_families.h"
#include "quant/qlinear.h"

namespace py = pybind11;

namespace pyllm {

void bind_quant(py::module_& m) {
  m.def(
      "qlinear_cpu",
      [](const TensorView& x, const TensorView& w, int qtype, const TensorView* bias, const TensorView& out,
         bool int8_act, bool prepack) {
        py::gil_scoped_release release;
        qlinear_cpu(x, w, qtype, bias, out, int8_act, prepack);
      },
      py::arg("x"), py::arg("weight"), py::arg("qtype"), py::arg("bias").none(true), py::arg("out"),
      py::arg("int8_act") = false, py::arg("prepack") = false,
      "out[T, N] = x[T, K] @ dequant(weight).T + bias (CPU; shapes checked in pyllm.ops.qlinear). "
      "int8_act: quantize x per 32-block to int8 first (block weights; approximate). prepack: with "
      "int8_act on AVX-512, use panels packed ahead as the model's runner does.");
  m.def(
      "qlinear_cpu_ptr",
      [](uintptr_t x, uintptr_t w, int qtype, uintptr_t bias, uintptr_t out, int64_t T, int64_t K, int64_t N,
         bool int8_act) {
        py::gil_scoped_release release;
        qlinear_cpu_ptr(x, w, qtype, bias, out, T, K, N, int8_act);
      },
      py::arg("x"), py::arg("weight"), py::arg("qtype"), py::arg("bias"), py::arg("out"), py::arg("T"),
      py::arg("K"), py::arg("N"), py::arg("int8_act") = false,
      "Raw-pointer qlinear for the validated decode hot path (contiguous tensors; bias 0 = none).");
}

}  // namespace pyllm
