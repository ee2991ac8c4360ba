// The pyllm._C module: common entries (TensorView, CPU features, threads) and every family's.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind_families.h"
#include "common/cpu_features.h"
#include "common/cuda_kernels.h"
#include "common/stall_guard.h"
#ifdef PYLLM_WITH_CUDA
#include "common/cuda_device.h"
#endif
#include "common/tensor_view.h"
#include "common/threads.h"

namespace py = pybind11;
using namespace pyllm;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyllm kernels (C++/CUDA on raw tensor views; see pyllm/ops for the checked entry points)";

  py::class_<TensorView>(m, "TensorView")
      .def(py::init<uintptr_t, int, const std::vector<int64_t>&, const std::vector<int64_t>&, int>(),
           py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("device") = 0)
      .def_property_readonly("ndim", [](const TensorView& v) { return v.ndim; })
      .def_property_readonly("shape", [](const TensorView& v) {
        return std::vector<int64_t>(v.shape, v.shape + v.ndim);
      });

  m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); },
        "The widest instruction set this CPU supports: baseline, avx2 or avx512.");
  m.def("cpu_isa", [] { return std::string(isa_name(cpu_isa())); },
        "The instruction set the CPU kernels use now.");
  m.def("set_cpu_isa", [](const std::string& name) { set_cpu_isa(isa_from_name(name)); },
        "Cap the CPU kernels' instruction set (baseline, avx2, avx512); capped at what the CPU has.");
  m.def("set_num_threads", &set_num_threads, "Threads used by the CPU kernels.");
  m.def("get_num_threads", &get_num_threads);
  py::class_<StallGuard>(m, "_StallGuard",
                         "The CPU drivers' stall fallback (common/stall_guard.h) on an explicit clock, for tests.")
      .def(py::init<>())
      .def("solo_at", &StallGuard::solo_at, py::arg("now"))
      .def("record_at", &StallGuard::record_at, py::arg("own_s"), py::arg("wait_s"), py::arg("now"));

  m.def("cuda_kernels", [] { return std::string(cuda_kernels_name(cuda_kernels())); },
        "The CUDA kernel family the ops launch: general or tuned (common/cuda_kernels.h).");
  m.def("set_cuda_kernels", [](const std::string& name) { set_cuda_kernels(cuda_kernels_from_name(name)); },
        "Choose the CUDA kernel family: general (every shape) or tuned (decode-shaped fast paths). "
        "No effect in a build without CUDA kernels.");

#ifdef PYLLM_WITH_CUDA
  m.attr("has_cuda") = true;
  m.def("cuda_device_count", &cuda_device_count, "Usable CUDA devices (0 without a GPU or driver).");
#else
  m.attr("has_cuda") = false;
  m.def("cuda_device_count", [] { return 0; }, "Always 0: this build has no CUDA kernels.");
#endif

  bind_norm_rope(m);
  bind_attention(m);
  bind_kv_cache(m);
  bind_sampling(m);
  bind_quant(m);
  bind_runner(m);
}
