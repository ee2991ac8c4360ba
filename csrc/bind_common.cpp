// Entries every build of the kernels has: TensorView (what every kernel entry takes) and the CUDA
// kernel family setting. pyllm._C and the CUDA emulator's module (tools/cuda_emu) both bind them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind_families.h"
#include "common/cuda_kernels.h"
#include "common/tensor_view.h"

namespace py = pybind11;

namespace pyllm {

void bind_common(py::module_& m) {
  py::class_<TensorView>(m, "TensorView")
      .def(py::init<uintptr_t, int, const std::vector<int64_t>&, const std::vector<int64_t>&, int>(),
           py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("device") = 0)
      .def_property_readonly("ndim", [](const TensorView& v) { return v.ndim; })
      .def_property_readonly("shape", [](const TensorView& v) {
        return std::vector<int64_t>(v.shape, v.shape + v.ndim);
      });

  m.def("cuda_kernels", [] { return std::string(cuda_kernels_name(cuda_kernels())); },
        "The CUDA kernel family the ops launch: general or tuned (common/cuda_kernels.h).");
  m.def("set_cuda_kernels", [](const std::string& name) { set_cuda_kernels(cuda_kernels_from_name(name)); },
        "Choose the CUDA kernel family: general (every shape) or tuned (decode-shaped fast paths). "
        "No effect in a build without CUDA kernels.");
}

}  // namespace pyllm
