#include "bind_families.h"

namespace pyllm {
void bind_kv_cache(pybind11::module_& m) {}
}  // namespace pyllm
