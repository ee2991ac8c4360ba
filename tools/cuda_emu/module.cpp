// pyllm_cuda_emu: the CUDA entries of pyllm._C (csrc/*/bind_cuda.cpp) built on the CUDA emulator,
// plus its controls. Tensors are CPU memory passed as TensorViews with device code 1 (CUDA).
// emu_build.py compiles everything with -Dpyllm=pyllm_emu, so its C++ types (TensorView above
// all) are not pyllm._C's, and both modules register theirs with pybind11 in one process.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind_families.h"
#include "emu/runtime.h"
#include "selftest.h"

namespace py = pybind11;

PYBIND11_MODULE(pyllm_cuda_emu, m) {
  m.doc() = "pyllm's CUDA kernels run by the CUDA emulator on the CPU (tools/cuda_emu)";
  pyllm::bind_common(m);
  pyllm::bind_norm_rope_cuda(m);
  pyllm::bind_attention_cuda(m);
  pyllm::bind_kv_cache_cuda(m);
  pyllm::bind_sampling_cuda(m);
  pyllm::bind_quant_cuda(m);

  m.def(
      "configure",
      [](int sm_count, int blocks_per_sm, uint64_t seed) {
        emu::DeviceConfig c;
        c.sm_count = sm_count;
        c.blocks_per_sm = blocks_per_sm;
        c.seed = seed;
        emu::configure(c);
      },
      py::arg("sm_count") = emu::DeviceConfig{}.sm_count, py::arg("blocks_per_sm") = emu::DeviceConfig{}.blocks_per_sm,
      py::arg("seed") = emu::DeviceConfig{}.seed,
      "Shape the emulated device (SMs, the occupancy query's answer) and seed the thread and block "
      "orders. The tuned attention asks the occupancy once per process.");
  m.def(
      "stats",
      [] {
        const emu::Stats s = emu::take_stats();
        py::dict d;
        d["launches"] = s.launches;
        d["blocks"] = s.blocks;
        d["switches"] = s.switches;
        d["undefined_shuffle_reads"] = s.undefined_shuffle_reads;
        d["errors"] = s.errors;
        return d;
      },
      "Counts since the last call: launches, blocks, fiber switches, shuffles that read an exited "
      "lane, errors.");
  m.def("clear_error", &emu::clear_error, "Forget a sticky launch error.");
  m.def("selftest", &pyllm::cuda_emulator_selftest, py::arg("name"),
        "Run one of selftest.cu's kernels: (its 256 output floats, the launch error or '').");
}
