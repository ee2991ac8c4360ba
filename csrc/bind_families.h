// Each kernel family binds its own entries in csrc/<family>/bind.cpp (CPU) and bind_cuda.cpp
// (CUDA); bindings.cpp calls them.
// (pybind11 appears only in bindings.cpp and the bind.cpp files; kernels never include it.)
#pragma once

#include <pybind11/pybind11.h>

namespace pyllm {
void bind_norm_rope(pybind11::module_& m);
void bind_attention(pybind11::module_& m);
void bind_kv_cache(pybind11::module_& m);
void bind_sampling(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_runner(pybind11::module_& m);

// Shared with the CUDA emulator's module (tools/cuda_emu/module.cpp), which builds only these.
void bind_common(pybind11::module_& m);
#ifdef PYLLM_WITH_CUDA
void bind_norm_rope_cuda(pybind11::module_& m);
void bind_attention_cuda(pybind11::module_& m);
void bind_kv_cache_cuda(pybind11::module_& m);
void bind_sampling_cuda(pybind11::module_& m);
void bind_quant_cuda(pybind11::module_& m);
#endif
}  // namespace pyllm
