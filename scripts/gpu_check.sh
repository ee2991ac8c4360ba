#!/usr/bin/env bash
# Build pyllm with its CUDA kernels and run every GPU check, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu_check.sh [STAGES]     STAGES: any of build,model,parity,tests,profile,bench (default: all,
#                                          run in that order: correctness first, then speed)
# Each stage gets at most its cap (PARITY_TIMEOUT, BENCH_TIMEOUT, TESTS_TIMEOUT seconds) and never
# more than what is left of DEADLINE (default 570 s from the start), so one call fits a 10-minute slot.
#
# Needs (prepared on a machine with internet, in the ignored folder .gpu/, which a device run must
# name in its carry list):
#   .gpu/*.whl                    pure-Python packages the GPU image lacks (gguf, prompt_toolkit, wcwidth)
#   .gpu/smollm2_metadata.json.gz the default model's key/value pairs (tokenizer, chat template):
#       python scripts/make_random_llama.py .gpu/smollm2_metadata.json.gz --dump-metadata SmolLM2-135M-Instruct.Q4_1.gguf
# Logs go to $OUT (or ./gpu-out): build.log, parity.log, tests.log, profile.log, bench.log, compare_cuda.json.
# Both CUDA kernel families (pyllm.ops.set_cuda_kernels) are checked and measured: the tests run
# each CUDA test on both, parity checks a batch-64 decode on each, and profile/bench report each
# (KERNELS=general,tuned; BENCH_ARGS replaces the default --compile of transformers).
# CI never runs this: the CUDA tests skip there ("no CUDA device").
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_FILES="$PWD/.gpu"
# SNAPSHOT=1: run on .gpu/src.tar (`git archive HEAD`) instead of the working tree, so work in
# progress elsewhere in the checkout cannot break the build; the figures then belong to that commit.
if [[ "${SNAPSHOT:-0}" == 1 && -f .gpu/src.tar ]]; then
  rm -rf /tmp/src && mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cd /tmp/src
  echo "running on the snapshot of commit $(cat "$GPU_FILES/src.commit" 2>/dev/null)"
fi
STAGES="${1:-build,model,parity,tests,profile,bench}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYLLM_HOME=/tmp/pyllm-home
PY=python3
has() { [[ ",$STAGES," == *",$1,"* ]]; }
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
left() {  # left CAP: seconds for the next stage
  local rest=$(( ${DEADLINE:-570} - ($(date +%s) - t0) ))
  (( rest > $1 )) && rest=$1; (( rest < 20 )) && rest=20; echo $rest
}

if ls "$GPU_FILES"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU_FILES"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"

if has build; then
  stamp build
  export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
  PYLLM_CUDA=ON SKBUILD_CMAKE_DEFINE="CMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
  echo "build exit $?"; tail -3 "$OUT/build.log"
  (cd /tmp && $PY -c "import pyllm._C as C, torch; print('pyllm._C has_cuda =', C.has_cuda, '| device present =', torch.cuda.is_available())")
fi

MODEL=/tmp/random-smollm2
if has model; then
  stamp "random SmolLM2-shaped model"
  $PY scripts/make_random_llama.py "$MODEL" --hf --metadata "$GPU_FILES/smollm2_metadata.json.gz"
fi


if has parity; then
  stamp parity
  timeout "$(left ${PARITY_TIMEOUT:-200})" $PY scripts/gpu_parity.py "$MODEL/model.gguf" 2>&1 | tee "$OUT/parity.log" | grep -E "PASS|FAIL|INFO|Error|error|passed"
fi

if has tests; then
  stamp tests
  # every op's CUDA kernel against its reference (hypothesis), the CUDA-graph runner, the model's
  # CUDA parity with transformers; tests needing the default model (a download) are left out, and
  # the emulated CUDA tests too (CPU work CI does; device time is short).
  timeout "$(left ${TESTS_TIMEOUT:-300})" $PY -m pytest -q -n 8 -p no:cacheprovider tests/ops tests/test_cuda_graph.py \
    --ignore=tests/ops/test_cuda_emulated.py \
    tests/test_model_parity.py > "$OUT/tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
  grep -c "SKIPPED" "$OUT/tests.log" | sed 's/^/skip lines: /'; grep "SKIPPED" "$OUT/tests.log" | head -8
fi
if has profile; then
  stamp profile
  timeout "$(left 120)" $PY scripts/gpu_profile.py "$MODEL/model.gguf" --batch 1,64 --context 256 \
    --kernels "${KERNELS:-general,tuned}" 2>&1 | tee "$OUT/profile.log"
fi

if has bench; then
  stamp bench
  timeout "$(left ${BENCH_TIMEOUT:-420})" $PY bench/compare_cuda.py --model-dir "$MODEL" --repeats "${REPEATS:-3}" \
    --kernels "${KERNELS:-general,tuned}" ${BENCH_ARGS---compile} --json "$OUT/compare_cuda.json" 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/bench.log"
fi
stamp done
