#include "bind_families.h"

namespace pyllm {
void bind_quant(pybind11::module_& m) {}
}  // namespace pyllm
