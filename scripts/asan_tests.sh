#!/usr/bin/env bash
# Build pyllm._C with AddressSanitizer + UndefinedBehaviorSanitizer (CPU kernels only) and run the
# kernel tests (tests/ops) against it, in a venv of its own so no other pyllm build is imported.
# PYLLM_SANITIZED=1 also makes tests/ops/test_cuda_emulated.py build the CUDA emulator with the
# sanitizers, so the CUDA kernels' memory accesses are checked as well.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/asan
stage=build/asan-stage
venv=build/asan-venv
PY=${PYTHON:-python3}
rm -rf "$venv" && "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q numpy gguf pytest hypothesis pybind11
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYLLM_SANITIZE=ON -DPYLLM_CUDA=OFF \
  -DPython_EXECUTABLE="$venv/bin/python" -Dpybind11_DIR="$("$venv/bin/python" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" -j "$(nproc)"
rm -rf "$stage" && mkdir -p "$stage"
cp -r pyllm "$stage/"
for p in plugins/pyllm_*; do cp -r "$p" "$stage/"; done
cp "$build"/_C*.so "$stage/pyllm/"
asan_rt=$(gcc -print-file-name=libasan.so)
ubsan_rt=$(gcc -print-file-name=libubsan.so)
# Leak checking is off: CPython and torch keep allocations alive until exit by design.
cd "$stage"
LD_PRELOAD="$asan_rt:$ubsan_rt" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
PYTHONPATH="$PWD" PYLLM_SANITIZED=1 \
  "../../$venv/bin/python" -m pytest -q -p no:cacheprovider \
  ../../tests/ops -x --hypothesis-profile=sanitizer "$@"
