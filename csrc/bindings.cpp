// The pyllm._C module: common entries (TensorView, CPU features, threads) and every family's.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind_families.h"
#include "common/cpu_features.h"
#include "common/stall_guard.h"
#ifdef PYLLM_WITH_CUDA
#include "common/cuda_device.h"
#endif
#include "common/threads.h"

namespace py = pybind11;
using namespace pyllm;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyllm kernels (C++/CUDA on raw tensor views; see pyllm/ops for the checked entry points)";

  bind_common(m);

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
#ifdef PYLLM_WITH_CUDA
  bind_norm_rope_cuda(m);
  bind_attention_cuda(m);
  bind_kv_cache_cuda(m);
  bind_sampling_cuda(m);
  bind_quant_cuda(m);
#endif
}
