#include "bind_families.h"

namespace pyllm {
void bind_attention(pybind11::module_& m) {}
}  // namespace pyllm
