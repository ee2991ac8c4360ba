// pyllm._C entries of the quant family's CUDA kernels (a CUDA build; the CUDA emulator in
// tools/cuda_emu builds them too). The stream comes from Python as an int:
// torch.cuda.current_stream().cuda_stream.
#ifdef PYLLM_WITH_CUDA
#include <pybind11/pybind11.h>

#include "bind_families.h"
#include "quant/qlinear.h"

namespace py = pybind11;

namespace pyllm {

void bind_quant_cuda(py::module_& m) {
  m.def(
      "qlinear_cuda",
      [](const TensorView& x, const TensorView& w, int qtype, const TensorView* bias, const TensorView& out,
         uintptr_t stream) {
        py::gil_scoped_release release;
        qlinear_cuda(x, w, qtype, bias, out, stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("qtype"), py::arg("bias").none(true), py::arg("out"),
      py::arg("stream"), "qlinear on the GPU, launched on `stream` (torch.cuda.current_stream().cuda_stream).");
  m.def(
      "dequantize_cuda",
      [](const TensorView& w, int qtype, const TensorView& out, uintptr_t stream) {
        py::gil_scoped_release release;
        dequantize_cuda(w, qtype, out, stream);
      },
      py::arg("weight"), py::arg("qtype"), py::arg("out"), py::arg("stream"),
      "The weight [N, row bytes] as float32 into out [N, K] on the GPU, launched on `stream`.");
}

}  // namespace pyllm
#endif  // PYLLM_WITH_CUDA
