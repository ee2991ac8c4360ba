"""Kernel selection: the CPU instruction-set paths (baseline / AVX2 / AVX-512, chosen at run time
by cpu_isa()) all agree with the references, PYLLM_CPU_ISA caps the choice for a whole process,
and PYLLM_KERNELS=reference puts the plain-PyTorch references behind every op."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyllm.ops as ops
from pyllm import _C

ISAS = ["baseline", "avx2", "avx512"]
DETECTED = _C.detected_isa()
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def examples(n: int) -> settings:
    """At most n examples, fewer when the active hypothesis profile asks (the sanitizer run)."""
    return settings(max_examples=min(n, settings.default.max_examples), deadline=None)


def isa_param(isa: str):
    lacking = ISAS.index(isa) > ISAS.index(DETECTED)
    return pytest.param(isa, marks=pytest.mark.skipif(
        lacking, reason=f"this CPU lacks {isa} (it supports up to {DETECTED})"))


AVAILABLE = [isa_param(isa) for isa in ISAS]


@contextlib.contextmanager
def cpu_isa(isa: str):
    """Run the kernels on `isa`, restoring the process's choice afterwards."""
    before = _C.cpu_isa()
    _C.set_cpu_isa(isa)
    try:
        yield
    finally:
        _C.set_cpu_isa(before)


def _check_ops(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor) -> None:
    tol = TOL[x.dtype]
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ops.rms_norm_ref(x, w, 1e-5), **tol)
    out, summed = ops.fused_add_rms_norm(x, residual, w, 1e-5)
    ref_out, ref_summed = ops.fused_add_rms_norm_ref(x, residual, w, 1e-5)
    torch.testing.assert_close(summed, ref_summed, **tol)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(ops.silu_mul(gate_up), ops.silu_mul_ref(gate_up), **tol)


@pytest.mark.parametrize("isa", AVAILABLE)
@examples(30)
@given(rows=st.integers(1, 6), hidden=st.integers(1, 70) | st.sampled_from([576, 1536, 4097]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**31 - 1))
def test_every_isa_path_matches_reference(isa, rows, hidden, dtype, seed):
    """Widths 1..70 cover every SIMD tail (8-, 16- and 32-wide loops); gates up to +-30 reach
    the saturated ends of the vector exp."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen).to(dtype)
    residual = (torch.randn(rows, hidden, generator=gen) * 3).to(dtype)
    w = torch.randn(hidden, generator=gen)
    gate_up = (torch.randn(rows, 2 * hidden, generator=gen) * 10).to(dtype)
    with cpu_isa(isa):
        assert _C.cpu_isa() == isa and _C.norm_rope_isa() == isa
        _check_ops(x, residual, w, gate_up)


def test_isa_paths_agree_with_each_other():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 1000, generator=gen)
    w = torch.randn(1000, generator=gen)
    gate_up = torch.randn(9, 2 * 1000, generator=gen) * 8
    results = {}
    for isa in ISAS[: ISAS.index(DETECTED) + 1]:
        with cpu_isa(isa):
            results[isa] = (ops.rms_norm(x, w, 1e-6), *ops.fused_add_rms_norm(x, x, w, 1e-6), ops.silu_mul(gate_up))
    base = results["baseline"]
    for isa, outs in results.items():
        for a, b in zip(outs, base):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{isa} vs baseline")


def test_set_cpu_isa_is_capped_and_validated():
    with cpu_isa("avx512"):
        assert _C.cpu_isa() == DETECTED  # never above what the CPU has
    with cpu_isa("baseline"):
        assert _C.cpu_isa() == "baseline"
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        _C.set_cpu_isa("sse9")


# --------------------------------------------------- process-wide switches

def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYLLM_KERNELS", "PYLLM_CPU_ISA",
                                                                   "PYLLM_CUDA_KERNELS")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120)


# One probe script per process: it reports the ISA in use and the ops' error against their
# references, then replaces the compiled entries with ones that fail loudly, so an op can only
# still work if it never reaches pyllm._C (the reference is what is registered).
PROBE = """
    import json, torch, pyllm.ops as ops
    from pyllm import _C

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 300, generator=gen), torch.randn(300, generator=gen)
    gu = torch.randn(5, 600, generator=gen) * 5
    report = {"cpu_isa": _C.cpu_isa(), "norm_rope_isa": _C.norm_rope_isa(),
              "mode": ops.kernel_mode(), "native": ops.native()}
    report["err"] = max((ops.rms_norm(x, w, 1e-5) - ops.rms_norm_ref(x, w, 1e-5)).abs().max().item(),
                        (ops.silu_mul(gu) - ops.silu_mul_ref(gu)).abs().max().item())

    def boom(*args, **kwargs):
        raise RuntimeError("compiled kernel called")

    for name in ("rms_norm_cpu", "fused_add_rms_norm_cpu", "layer_norm_cpu", "rope_cpu",
                 "silu_mul_cpu", "gelu_tanh_cpu"):
        setattr(_C, name, boom)
    x, w = torch.randn(3, 16), torch.randn(16)
    q, k = torch.randn(2, 2, 16), torch.randn(2, 1, 16)
    pos, cs = torch.tensor([0, 3]), ops.rope_cos_sin(4, 16, 1e4)
    calls = {
        "rms_norm": lambda: (torch.ops.pyllm.rms_norm(x, w, 1e-5), ops.rms_norm_ref(x, w, 1e-5)),
        "fused_add_rms_norm": lambda: (torch.ops.pyllm.fused_add_rms_norm(x, x, w, 1e-5)[0],
                                       ops.fused_add_rms_norm_ref(x, x, w, 1e-5)[0]),
        "layer_norm": lambda: (ops.layer_norm(x, w, w, 1e-5), ops.layer_norm_ref(x, w, w, 1e-5)),
        "rope": lambda: (ops.rope(q, k, pos, cs, True)[0], ops.rope_ref(q, k, pos, cs, True)[0]),
        "silu_mul": lambda: (ops.silu_mul(x), ops.silu_mul_ref(x)),
        "gelu_tanh": lambda: (ops.gelu_tanh(x), ops.gelu_tanh_ref(x)),
    }
    for name, call in calls.items():
        try:
            got, ref = call()
            report[name] = "identical" if torch.equal(got, ref) else "different"
        except RuntimeError as exc:
            report[name] = str(exc)
    try:  # the boundary checks its input in either mode
        ops.rms_norm(x, torch.randn(15), 1e-5)
        report["bad_input"] = "accepted"
    except ValueError as exc:
        report["bad_input"] = str(exc)
    print(json.dumps(report))
"""
PROBED_OPS = ["rms_norm", "fused_add_rms_norm", "layer_norm", "rope", "silu_mul", "gelu_tanh"]


def probe(**env: str) -> dict:
    proc = run_python(PROBE, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_env_forces_baseline_isa():
    report = probe(PYLLM_CPU_ISA="baseline")
    assert report["cpu_isa"] == "baseline" and report["norm_rope_isa"] == "baseline"
    assert report["err"] < 1e-4
    assert all(report[name] == "compiled kernel called" for name in PROBED_OPS)


def test_native_mode_runs_the_compiled_kernels_on_the_widest_isa():
    """The control for the reference-mode test: without the switches every op reaches pyllm._C."""
    report = probe()
    assert report["mode"] == "native" and report["native"] is True
    assert report["cpu_isa"] == DETECTED and report["err"] < 1e-4
    for name in PROBED_OPS:
        assert report[name] == "compiled kernel called", (name, report[name])
    assert "weight" in report["bad_input"]


def test_reference_mode_registers_the_references():
    report = probe(PYLLM_KERNELS="reference")
    assert report["mode"] == "reference" and report["native"] is False
    for name in PROBED_OPS:
        assert report[name] == "identical", (name, report[name])
    assert "weight" in report["bad_input"]


def test_unknown_kernel_mode_is_refused(monkeypatch):
    monkeypatch.setenv("PYLLM_KERNELS", "fastest")
    with pytest.raises(ValueError, match="PYLLM_KERNELS"):
        ops.kernel_mode()


# ------------------------------------------------------------- the CUDA kernel family


def test_cuda_kernel_family_is_set_validated_and_restored():
    before = ops.get_cuda_kernels()  # general, unless PYLLM_CUDA_KERNELS says otherwise
    with ops.using_cuda_kernels("general"):
        assert _C.cuda_kernels() == "general"
    assert ops.get_cuda_kernels() == before
    ops.set_cuda_kernels("general")
    with ops.using_cuda_kernels("tuned"):
        assert ops.get_cuda_kernels() == "tuned" and _C.cuda_kernels() == "tuned"
        with pytest.raises(ValueError, match="general, tuned"):
            ops.set_cuda_kernels("fastest")
        assert ops.get_cuda_kernels() == "tuned"  # a refused name changes nothing
    assert ops.get_cuda_kernels() == "general"
    with pytest.raises(ValueError, match="general, tuned"):
        with ops.using_cuda_kernels("turbo"):
            pass
    assert ops.get_cuda_kernels() == "general"
    ops.set_cuda_kernels(before)


@pytest.mark.parametrize("value,expect", [("tuned", "tuned"), (" Tuned ", "tuned"), ("", "general"),
                                          ("general", "general")])
def test_cuda_kernel_family_from_the_environment(value, expect):
    proc = run_python("import pyllm.ops as o; print(o.get_cuda_kernels())", PYLLM_CUDA_KERNELS=value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expect


def test_unknown_cuda_kernel_family_in_the_environment_is_refused():
    proc = run_python("import pyllm.ops", PYLLM_CUDA_KERNELS="fastest")
    assert proc.returncode != 0
    assert "PYLLM_CUDA_KERNELS must be one of general, tuned, not 'fastest'" in proc.stderr
