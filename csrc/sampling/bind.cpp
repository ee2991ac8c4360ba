#include "bind_families.h"

namespace pyllm {
void bind_sampling(pybind11::module_& m) {}
}  // namespace pyllm
