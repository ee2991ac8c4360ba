// Each kernel family binds its own entries in csrc/<family>/bind.cpp; bindings.cpp calls them.
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
}  // namespace pyllm
