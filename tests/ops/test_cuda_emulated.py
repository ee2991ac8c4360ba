"""Every CUDA kernel of csrc/, run by the CUDA emulator on the CPU, against its reference.

tools/cuda_emu compiles the .cu files with g++ (threads of a block as fibers, shared memory
poisoned at block start, thread order shuffled between barriers, launch limits enforced), so
these tests run the real kernel source where no GPU exists: wrong indexing, a missing barrier, a
read of uninitialized shared memory, a shuffle across exited lanes, an over-limit launch, or a
wrong result fails here. Floating-point details of the GPU (its __expf, FMA contraction) are not
emulated, so tolerances are those of the reference comparisons; timing and memory coalescing are
only measurable on a GPU (scripts/gpu_check.sh).

The tests call pyllm/ops' own CUDA code (its workspace sizes, argument order, the cuBLAS
prefill path) on CPU tensors: inside `emulated_cuda`, `_library`'s `_C` CUDA entries, `view` and
`cuda_stream` come from the emulator.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyllm.ops as ops
from pyllm.ops import _library as L
from pyllm.ops import activation as Act
from pyllm.ops import attention as A
from pyllm.ops import kv_cache as K
from pyllm.ops import norm as N
from pyllm.ops import sampling as S
from pyllm.ops.qlinear import QTYPE_CODES, QWeight, dequantize_weight, qlinear_ref
from pyllm.ops.sampling import sample_tokens_ref
from pyllm.weights.quant import OP_QTYPE_CODES, block_size

from test_attention import cases as attention_cases
from test_attention import make_case, tolerance
from test_qlinear import QTYPES, case_data, check_close, make_weight
from test_qlinear_superblock import random_weight
from test_sampling import params as sampling_params
from test_sampling import random_mask
from test_sampling import run as cpu_sample
from test_sampling import sampling_inputs

# pyllm.ops exports functions named qlinear and rope, which hide these modules as attributes.
Q = importlib.import_module("pyllm.ops.qlinear")
R = importlib.import_module("pyllm.ops.rope")
ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["general", "tuned"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def examples(n: int) -> settings:
    """At most n examples, fewer when the active hypothesis profile asks (the sanitizer run)."""
    return settings(max_examples=min(n, settings.default.max_examples), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


FEW = examples(20)


@functools.lru_cache(maxsize=1)
def _emulator():
    sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
    try:
        import emu_build
    finally:
        sys.path.pop(0)
    try:  # the sanitizer run (scripts/asan_tests.sh) checks the kernels' memory accesses too
        return emu_build.load(sanitize=os.environ.get("PYLLM_SANITIZED") == "1")
    except emu_build.ToolchainMissing as e:  # a kernel the emulator cannot compile fails instead
        return e


@pytest.fixture(scope="module")
def E():
    """The emulator module (built once per tree; skipped without a C++ compiler or pybind11, or
    off x86-64)."""
    emu = _emulator()
    if isinstance(emu, Exception):
        pytest.skip(f"the CUDA emulator cannot be built here: {emu}")
    emu.clear_error()
    emu.stats()
    return emu


def assert_clean(E, launched: bool = True) -> None:
    """Since the last check: no launch error, no shuffle that read a lane that had exited, and
    (launched) at least one launch."""
    stats = E.stats()
    assert stats["errors"] == 0, "the emulator reported an error"
    assert stats["undefined_shuffle_reads"] == 0, "a shuffle read a lane that had exited"
    assert stats["launches"] > 0 or not launched, "nothing was launched"


def view(E, t: torch.Tensor):
    """t's memory as a device tensor view for the emulator."""
    return E.TensorView(t.data_ptr(), L._DTYPE_CODES[t.dtype], list(t.shape), list(t.stride()), 1)


class _EmulatedEntries:
    """pyllm._C with its CUDA entries (and the kernel-family setting) taken from the emulator."""

    def __init__(self, E, real) -> None:
        self._E, self._real = E, real

    def __getattr__(self, name: str):
        return getattr(self._E if "cuda" in name else self._real, name)


@contextlib.contextmanager
def emulated_cuda(E, family: str = "general", launches: bool = True):
    """Run pyllm/ops' CUDA code on CPU tensors through the emulator (CPU ops do not work inside:
    their views would be the emulator's). Afterwards: no launch error, no undefined shuffle, and
    a launch unless `launches` is false."""
    saved = L._C, L.view, L.cuda_stream
    L._C = _EmulatedEntries(E, saved[0])
    L.view = functools.partial(view, E)
    L.cuda_stream = lambda device=None: 0
    try:
        with ops.using_cuda_kernels(family):
            yield
    finally:
        L._C, L.view, L.cuda_stream = saved
    assert_clean(E, launches)


def randn(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


# ------------------------------------------------------------------ the small fused ops

@FEW
@given(rows=st.integers(1, 4), hidden=st.one_of(st.integers(1, 70), st.sampled_from([255, 576, 2049])),
       xd=st.sampled_from(DTYPES), wd=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_norms(E, rows, hidden, xd, wd, seed):
    gen = torch.Generator().manual_seed(seed)
    x, r = randn((rows, hidden), xd, gen), randn((rows, hidden), xd, gen)
    w, b = randn((hidden,), wd, gen), randn((hidden,), wd, gen)
    with emulated_cuda(E):
        out = N._rms_norm_cuda(x, w, 1e-6)
        fused, r_out = N._fused_cuda(x, r, w, 1e-6)
        layer = N._layer_norm_cuda(x, w, b, 1e-5)
    torch.testing.assert_close(out.float(), ops.rms_norm_ref(x, w, 1e-6).float(), **TOL[xd])
    want, want_r = ops.fused_add_rms_norm_ref(x, r, w, 1e-6)
    torch.testing.assert_close(r_out.float(), want_r.float(), **TOL[xd])
    torch.testing.assert_close(fused.float(), want.float(), **TOL[xd])
    torch.testing.assert_close(layer.float(), ops.layer_norm_ref(x, w, b, 1e-5).float(), **TOL[xd])


@FEW
@given(tokens=st.integers(1, 5), hq=st.integers(1, 9), hk=st.integers(1, 3),
       head_dim=st.sampled_from([2, 6, 64, 128]), neox=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_rope(E, tokens, hq, hk, head_dim, neox, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = randn((tokens, hq, head_dim), dtype, gen), randn((tokens, hk, head_dim), dtype, gen)
    positions = torch.randint(0, 50, (tokens,), generator=gen)
    cos_sin = ops.rope_cos_sin(50, head_dim, 10000.0)
    with emulated_cuda(E):
        q_out, k_out = R._rope_cuda(q, k, positions, cos_sin, neox)
    q_ref, k_ref = ops.rope_ref(q, k, positions, cos_sin, neox)
    torch.testing.assert_close(q_out.float(), q_ref.float(), **TOL[dtype])
    torch.testing.assert_close(k_out.float(), k_ref.float(), **TOL[dtype])


@FEW
@given(rows=st.integers(1, 3), half=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_activations(E, rows, half, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn((rows, 2 * half), dtype, gen, scale=4.0)
    with emulated_cuda(E):
        silu, gelu = Act._silu_mul_cuda(x), Act._gelu_cuda(x)
    torch.testing.assert_close(silu.float(), ops.silu_mul_ref(x).float(), **TOL[dtype])
    torch.testing.assert_close(gelu.float(), ops.gelu_tanh_ref(x).float(), **TOL[dtype])


@FEW
@given(tokens=st.integers(1, 6), hkv=st.integers(1, 3), d=st.sampled_from([4, 64, 128]),
       src=st.sampled_from(DTYPES), dst=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_kv_cache_write_from_strided_rows(E, tokens, hkv, d, src, dst, seed):
    """Rows are views of a fused QKV output (strided), slots scattered, one padding slot (-1)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = randn((tokens, 3 * hkv * d), src, gen)
    k = qkv[:, hkv * d:2 * hkv * d].view(tokens, hkv, d)
    v = qkv[:, 2 * hkv * d:].view(tokens, hkv, d)
    k_cache = torch.full((4, 8, hkv, d), float("nan"), dtype=dst)
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(32, generator=gen)[:tokens]
    slots[0] = -1
    want_k, want_v = k_cache.clone(), v_cache.clone()
    K.write_kv_cache_ref_(k, v, want_k, want_v, slots)
    with emulated_cuda(E):
        K._write_cuda(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.isnan(), want_k.isnan()) and torch.equal(v_cache.isnan(), want_v.isnan())
    torch.testing.assert_close(k_cache, want_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, want_v, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------ attention

def emulated_attention(E, case, family: str = "general") -> torch.Tensor:
    """pyllm/ops/attention.py's CUDA launch (workspace and all) on the emulator."""
    q = case.q.contiguous()
    out = torch.full_like(q, float("nan"))
    with emulated_cuda(E, family):
        A._launch_cuda(q, case.k_cache, case.v_cache, case.query_start, case.context_lens, case.block_tables,
                       case.scale, case.sliding_window, out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@examples(25)
@given(case=attention_cases())
def test_attention_matches_reference(E, family, case):
    out = emulated_attention(E, case, family)
    assert not out.isnan().any(), "NaN leaked into the output"
    torch.testing.assert_close(out.double(), case.reference64(), **tolerance(case.q.dtype))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (32, 4, 64), (8, 2, 128)])
@pytest.mark.parametrize("sm_count", [1, 132, 2000])
def test_attention_decode_batch_with_splits(E, family, cache_dtype, hq, hkv, d, sm_count):
    """Decode rows of mixed lengths in the tuned kernel's shapes (head dim 64 with G = 3 and 8,
    head dim 128 with G = 4) on devices of 1, 132 and 2000 SMs: few splits or none, some, and
    the most (splits of 64 keys, so most of the short rows' splits see no key)."""
    E.configure(sm_count=sm_count, seed=sm_count)
    try:
        case = make_case([(1, 700), (1, 1), (1, 65), (1, 200)], hq, hkv, d, 16, seed=hq + d,
                         cache_dtype=cache_dtype)
        max_context = case.block_tables.shape[1] * 16
        with emulated_cuda(E, family, launches=False):
            splits = L._C.paged_attention_cuda_workspace(4, hq, hkv, d, max_context) // (4 * hq * (d + 2))
        assert splits > 1 or sm_count == 1
        torch.testing.assert_close(emulated_attention(E, case, family).double(), case.reference64(),
                                   **tolerance(torch.float32))
    finally:
        E.configure()


def test_tuned_attention_equals_general_on_smollm2_shape(E):
    case = make_case([(1, n) for n in (1, 17, 64, 130, 333)], 9, 3, 64, 16, seed=3,
                     cache_dtype=torch.float16)
    outs = {}
    for family in FAMILIES:
        outs[family] = emulated_attention(E, case, family)
    torch.testing.assert_close(outs["tuned"], outs["general"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ qlinear

def emulated_qlinear(E, x, w, code, n, bias=None, family: str = "general") -> torch.Tensor:
    """pyllm/ops/qlinear.py's CUDA path on the emulator (tuned, from 129 tokens: the weight
    dequantized by the kernel, then torch's matmul, here on the CPU)."""
    with emulated_cuda(E, family):
        return Q._cuda(x, w, code, n, bias)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("qtype", QTYPES)
@examples(10)
@given(t=st.sampled_from([1, 2, 3, 5, 8, 9, 33, 70, 128, 129]), kb=st.integers(1, 12), n=st.integers(1, 70),
       with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_qlinear_matches_reference(E, family, qtype, t, kb, n, with_bias, seed):
    """Every kernel: the GEMV (<= 8 tokens; the tuned one reads ahead), the tuned split-K tile
    (9..128 tokens) and the 64x64 tile (the general family above 8 tokens)."""
    w, x, bias, ref, wf = case_data(qtype, t, 32 * kb, n, with_bias, seed, False)
    check_close(emulated_qlinear(E, x, w, QTYPE_CODES[qtype], n, bias, family), ref, x, wf, bias)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("qtype", ["q5_0", "q5_1", "q4_k", "q5_k", "q6_k"])
@examples(4)
@given(t=st.sampled_from([1, 3, 9, 129]), nblocks=st.integers(1, 2), n=st.integers(1, 9),
       with_bias=st.booleans(), raw=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_qlinear_superblock_types_match_reference(E, family, qtype, t, nblocks, n, with_bias, raw, seed):
    """Q5_0/Q5_1/K-quants (csrc/quant/qlinear_superblock.cu): the per-output kernel, and from 129
    tokens with the tuned family the dequantize kernel then torch's matmul; raw blocks include
    non-finite scales."""
    k = nblocks * block_size(qtype)
    w = random_weight(qtype, n, k, seed, raw)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    code = OP_QTYPE_CODES[qtype]
    ref = qlinear_ref(x, w, code, n, bias)
    wf = dequantize_weight(w, code, k)
    check_close(emulated_qlinear(E, x, w, code, n, bias, family), ref, x, wf, bias)


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("t", [1, 3, 8])
def test_tuned_gemv_is_bit_identical_to_the_general_one(E, qtype, t):
    gen = torch.Generator().manual_seed(t)
    w = make_weight(qtype, 45, 32 * 41, gen, raw_bytes=False)
    x = torch.randn(t, 32 * 41, generator=gen)
    outs = {}
    for family in FAMILIES:
        outs[family] = emulated_qlinear(E, x, w, QTYPE_CODES[qtype], 45, family=family)
    assert torch.equal(outs["tuned"], outs["general"])


@pytest.mark.parametrize("qtype", ["f16", "bf16", "f32"])
@pytest.mark.parametrize("k", [4, 36, 37])
def test_qlinear_float_weights_of_any_width(E, qtype, k):
    """A partial last chunk; odd K leaves the split-K tile (float4 loads) for the general tile."""
    gen = torch.Generator().manual_seed(k)
    w = make_weight(qtype, 21, k, gen, raw_bytes=False)
    code = QTYPE_CODES[qtype]
    for t in (5, 9, 40):
        x = torch.randn(t, k, generator=gen)
        check_close(emulated_qlinear(E, x, w, code, 21, family="tuned"), qlinear_ref(x, w, code, 21, None), x,
                    QWeight(w, qtype, 21, k).dequantize())


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_is_the_reference_bit_for_bit(E, qtype):
    gen = torch.Generator().manual_seed(len(qtype))
    n, k = 13, 96
    w = make_weight(qtype, n, k, gen, raw_bytes=True)
    code = QTYPE_CODES[qtype]
    got = torch.full((n, k), 7.0)
    with emulated_cuda(E):
        L._C.dequantize_cuda(L.view(w), code, L.view(got), L.cuda_stream())
    torch.testing.assert_close(got, dequantize_weight(w, code, k), rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------ sampling

def sampler_args(x, f, i, recent, bias) -> list[torch.Tensor]:
    """The kernel's seven inputs (logits, parameter rows, penalty window, logit bias as rows, ids
    and values)."""
    rows, ids, vals = bias
    return [x, f, i, recent, torch.tensor(rows, dtype=torch.int64), torch.tensor(ids, dtype=torch.int64),
            torch.tensor(vals, dtype=torch.float32)]


def emulated_sample(E, x, f, i, recent, bias, n):
    """pyllm/ops/sampling.py's CUDA launch (its workspace) on the emulator."""
    outs = S._outputs(x, n)
    with emulated_cuda(E):
        S._launch_cuda([a.contiguous() for a in sampler_args(x, f, i, recent, bias)], outs)
    return outs


@examples(25)
@given(inputs=sampling_inputs())
def test_sampler_draws_what_the_cpu_draws(E, inputs):
    """The same Philox stream and rules: a seeded row gives the CPU kernel's token (and the
    reference's), its log-probs and top-n list."""
    x, f, i, recent, bias, n = inputs
    gpu = emulated_sample(E, x, f, i, recent, bias, n)
    cpu = cpu_sample(x, f, i, recent=recent, bias=bias, n=n)
    ref = sample_tokens_ref(*sampler_args(x, f, i, recent, bias), n)
    assert torch.equal(gpu[0], cpu[0]) and torch.equal(gpu[0], ref[0])
    assert torch.equal(gpu[2], cpu[2])
    for g, c in zip((gpu[1], gpu[3], gpu[4]), (cpu[1], cpu[3], cpu[4])):
        torch.testing.assert_close(g, c, atol=1e-5, rtol=1e-6, equal_nan=True)


@examples(15)
@given(inputs=sampling_inputs(), density=st.sampled_from([0.0, 0.05, 0.5]),
       mask_seed=st.integers(0, 2**31 - 1))
def test_sampler_token_mask_draws_what_the_cpu_draws(E, inputs, density, mask_seed):
    """Structured output's token bitmask: the CUDA kernel masks the same ids as the CPU kernel
    and the reference, before penalties and filters."""
    x, f, i, recent, bias, n = inputs
    mask = random_mask(x.shape[0], x.shape[1], torch.Generator().manual_seed(mask_seed), density)
    outs = S._outputs(x, n)
    with emulated_cuda(E):
        S._launch_cuda([a.contiguous() for a in [*sampler_args(x, f, i, recent, bias), mask]], outs)
    cpu = ops.sample_tokens(*sampler_args(x, f, i, recent, bias), num_logprobs=n, token_mask=mask)
    ref = sample_tokens_ref(*sampler_args(x, f, i, recent, bias), n, mask)
    assert torch.equal(outs[0], cpu[0]) and torch.equal(outs[0], ref[0])
    for g, c in zip((outs[1], outs[3], outs[4]), (cpu[1], cpu[3], cpu[4])):
        torch.testing.assert_close(g, c, atol=1e-5, rtol=1e-6, equal_nan=True)


def test_sampler_large_vocabulary(E):
    """SmolLM2's vocabulary with every filter and a penalty window, 3 rows."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 49152, generator=gen) * 3
    f, i = sampling_params(3, temperature=0.8, top_k=40, top_p=0.95, min_p=0.02, typical_p=0.97,
                           repetition=1.1)
    recent = torch.randint(0, 49152, (3, 64), generator=gen)
    gpu = emulated_sample(E, x, f, i, recent, ([], [], []), 5)
    cpu = cpu_sample(x, f, i, recent=recent, n=5)
    assert torch.equal(gpu[0], cpu[0]) and torch.equal(gpu[2], cpu[2])


# ------------------------------------------------------------------ determinism

@pytest.mark.parametrize("family", FAMILIES)
def test_results_do_not_depend_on_thread_or_block_order(E, family):
    """The kernels reduce in a fixed order (no float atomics), so the GPU's scheduling cannot
    change a bit of their output; here the emulator's orders change with its seed. A race on
    shared memory would also show up as a difference."""
    case = make_case([(1, 700), (1, 1), (4, 65), (1, 200)], 9, 3, 64, 16, seed=5,
                     cache_dtype=torch.bfloat16)
    w, x, bias, _, _ = case_data("q4_1", 40, 32 * 6, 50, True, 1, False)
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 3001, generator=gen) * 3
    f, i = sampling_params(3, temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, typical_p=0.95,
                           repetition=1.2)
    recent = torch.randint(0, 3001, (3, 16), generator=gen)
    runs = []
    for seed in (1, 2, 3):
        E.configure(seed=seed)
        runs.append((emulated_attention(E, case, family),
                     emulated_qlinear(E, x, w, QTYPE_CODES["q4_1"], 50, bias, family),
                     emulated_qlinear(E, x[:5], w, QTYPE_CODES["q4_1"], 50, bias, family),
                     *emulated_sample(E, logits, f, i, recent, ([], [], []), 3)))
    E.configure()
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ the emulator itself

@pytest.mark.parametrize("name,error", [
    ("split_warp", "deadlock"),
    ("two_barriers", "divergence"),
    ("over_launch_bounds", "__launch_bounds__(64)"),
    ("grid_y_too_large", "invalid launch configuration"),
    ("dynamic_shared_over_default", "cudaFuncSetAttribute"),
])
def test_emulator_reports_what_a_gpu_would_fail_on(E, name, error):
    E.configure(seed=1)
    _, message = E.selftest(name)
    assert error in message
    assert E.stats()["errors"] > 0


def test_emulator_runs_correct_kernels_cleanly(E):
    E.configure(seed=1)
    out, message = E.selftest("block_sum")
    assert message == "" and out[0] == sum(range(1, 65))
    out, message = E.selftest("dynamic_shared")
    assert message == "" and out[:256] == [float((i + 1) % 256) for i in range(256)]
    out, message = E.selftest("dynamic_shared_opted_in")
    assert message == "" and out[:3] == [1.0, 2.0, 3.0]
    assert_clean(E)


def test_emulator_warp_votes(E):
    """__ballot_sync / __any_sync / __all_sync over lanes with lane % 3 == 0, in a block of 40
    threads: the second warp's 24 missing lanes are inactive and vote 0."""
    out, message = E.selftest("vote")
    assert message == ""
    first = sum(1 << i for i in range(0, 32, 3))
    second = sum(1 << i for i in range(32, 40) if i % 3 == 0) >> 32
    ballots = torch.tensor([first] * 32 + [second] * 8, dtype=torch.float32)  # as the kernel stores them
    assert out[:40] == ballots.tolist()
    assert out[64:104] == [3.0] * 40  # any (some lane votes yes) + 2 * all (every active lane < 64)
    assert_clean(E)


def test_emulator_catches_a_missing_barrier_and_an_exited_lane(E):
    """Shared memory starts as NaN and thread order is shuffled: thread 0 summing before the
    others wrote reads NaN (in some of a few seeds); lanes reading exited lanes are counted."""
    sums = []
    for seed in range(5):
        E.configure(seed=seed)
        out, message = E.selftest("block_sum_without_barrier")
        assert message == ""
        sums.append(out[0])
    assert any(math.isnan(v) for v in sums)
    E.stats()
    E.selftest("exited_lane")
    assert E.stats()["undefined_shuffle_reads"] == 16
