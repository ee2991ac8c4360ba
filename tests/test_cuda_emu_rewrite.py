"""tools/cuda_emu/rewrite.py: the source changes that let g++ compile a .cu file for the CUDA
emulator, each on its line (compiler messages and barrier sites keep the .cu line numbers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "cuda_emu"))
from rewrite import RewriteError, rewrite  # noqa: E402


def body(text: str) -> str:
    out = rewrite(text, "x.cu")
    assert out.startswith('#line 1 "x.cu"\n')
    return out.split("\n", 1)[1]


def test_launches_become_emu_launch_calls():
    src = ("k<<<grid, 128, 0, stream>>>(a, b);\n"
           "  gemv<QT, 1, kTuned><<<dim3(n), block, smem, s>>>(x);\n"
           "ns::kernel <<<1, 32>>>();\n")
    assert body(src) == ("::emu::launch(k, grid, 128, 0, stream)(a, b);\n"
                         "  ::emu::launch(gemv<QT, 1, kTuned>, dim3(n), block, smem, s)(x);\n"
                         "::emu::launch(ns::kernel, 1, 32)();\n")


def test_shared_variables_become_poisoned_statics():
    src = ("  __shared__ float red_m[4][G], red_l[4][G];\n"
           "  __shared__ Shared sh;\n"
           "  extern __shared__ __align__(16) unsigned char smem_raw[];\n")
    out = body(src).splitlines()
    assert out[0] == ("  static float red_m[4][G], red_l[4][G]; ::emu::shared_declared(&red_m, sizeof(red_m)); "
                      "::emu::shared_declared(&red_l, sizeof(red_l));")
    assert out[1] == "  static Shared sh; ::emu::shared_declared(&sh, sizeof(sh));"
    assert out[2] == "  unsigned char* smem_raw = reinterpret_cast<unsigned char*>(::emu::dynamic_shared());"


def test_launch_bounds_become_a_check_in_the_kernel_body():
    src = "__global__ void __launch_bounds__(32 * kWarps)\nkern(float* x) {\n  x[0] = 1;\n}\n"
    assert body(src) == "__global__ void \nkern(float* x) { ::emu::check_launch_bounds(32 * kWarps);\n  x[0] = 1;\n}\n"


def test_every_csrc_cuda_file_rewrites_line_for_line():
    root = Path(__file__).resolve().parents[1] / "csrc"
    files = sorted(root.rglob("*.cu")) + sorted(root.rglob("*.cuh"))
    assert files
    for f in files:
        text = f.read_text()
        out = rewrite(text, str(f)).split("\n", 1)[1]
        assert out.count("\n") == text.count("\n")
        assert "<<<" not in out and "__shared__" not in out and "__launch_bounds__" not in out


def test_what_it_cannot_rewrite_is_an_error():
    with pytest.raises(RewriteError):
        rewrite("k<<<1, 2>>(x);", "x.cu")
    with pytest.raises(RewriteError):
        rewrite("<<<1, 2>>>(x);", "x.cu")
