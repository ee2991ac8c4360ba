// pyllm._C entries of the norm_rope family's CUDA kernels (a CUDA build; the CUDA emulator in
// tools/cuda_emu builds them too). The stream comes from Python as an int:
// torch.cuda.current_stream().cuda_stream.
#ifdef PYLLM_WITH_CUDA
#include <pybind11/pybind11.h>

#include "bind_families.h"
#include "norm_rope/norm_rope.h"

namespace py = pybind11;

namespace pyllm {

namespace {
cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
const TensorView* opt(const py::object& v) { return v.is_none() ? nullptr : &v.cast<const TensorView&>(); }
}  // namespace

void bind_norm_rope_cuda(py::module_& m) {
  m.def("rms_norm_cuda", [](const TensorView& x, const TensorView& w, const TensorView& out, float eps,
                            uintptr_t stream) { rms_norm_cuda(x, w, out, eps, as_stream(stream)); },
        py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("eps"), py::arg("stream"));
  m.def("fused_add_rms_norm_cuda",
        [](const TensorView& x, const TensorView& r, const TensorView& w, const TensorView& out,
           const TensorView& r_out, float eps, uintptr_t stream) {
          fused_add_rms_norm_cuda(x, r, w, out, r_out, eps, as_stream(stream));
        },
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("out"), py::arg("residual_out"),
        py::arg("eps"), py::arg("stream"));
  m.def("layer_norm_cuda",
        [](const TensorView& x, const TensorView& w, const py::object& bias, const TensorView& out, float eps,
           uintptr_t stream) { layer_norm_cuda(x, w, opt(bias), out, eps, as_stream(stream)); },
        py::arg("x"), py::arg("weight"), py::arg("bias").none(true), py::arg("out"), py::arg("eps"),
        py::arg("stream"));
  m.def("rope_cuda",
        [](const TensorView& q, const TensorView& k, const TensorView& pos, const TensorView& cs,
           const TensorView& q_out, const TensorView& k_out, bool neox, uintptr_t stream) {
          rope_cuda(q, k, pos, cs, q_out, k_out, neox, as_stream(stream));
        },
        py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("cos_sin"), py::arg("q_out"),
        py::arg("k_out"), py::arg("neox"), py::arg("stream"));
  m.def("silu_mul_cuda", [](const TensorView& x, const TensorView& out, uintptr_t stream) {
          silu_mul_cuda(x, out, as_stream(stream));
        }, py::arg("x"), py::arg("out"), py::arg("stream"));
  m.def("gelu_tanh_cuda", [](const TensorView& x, const TensorView& out, uintptr_t stream) {
          gelu_tanh_cuda(x, out, as_stream(stream));
        }, py::arg("x"), py::arg("out"), py::arg("stream"));
}

}  // namespace pyllm
#endif  // PYLLM_WITH_CUDA
