// pyllm._C entries of the kv_cache family's CUDA kernels (a CUDA build; the CUDA emulator in
// tools/cuda_emu builds them too). The stream comes from Python as an int:
// torch.cuda.current_stream().cuda_stream.
#ifdef PYLLM_WITH_CUDA
#include "bind_families.h"
#include "kv_cache/kv_cache.h"

namespace py = pybind11;

namespace pyllm {

void bind_kv_cache_cuda(py::module_& m) {
  m.def("write_kv_cache_cuda", &write_kv_cache_cuda, py::arg("k"), py::arg("v"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slot_mapping"), py::arg("stream"));
}

}  // namespace pyllm
#endif  // PYLLM_WITH_CUDA
