"""The small fused ops (rms_norm, fused_add_rms_norm, layer_norm, rope, silu_mul, gelu_tanh):
kernels against their references over random shapes and dtypes, opcheck, the RoPE table, and
the op boundary's input checks. CUDA cases skip when no GPU is present."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import pyllm.ops as ops
from pyllm.ops.rope import rope_inv_freq

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# float32: both sides compute in float32 (the kernel sums in double or in SIMD lanes);
# half types: the same float32 value rounded once, so at most a rounding step apart.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


def examples(n: int) -> settings:
    """At most n examples, fewer when the active hypothesis profile asks (the sanitizer run)."""
    return settings(max_examples=min(n, settings.default.max_examples), deadline=None)


dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**31 - 1)
hidden_sizes = st.one_of(st.integers(1, 130), st.sampled_from([255, 576, 1025, 2048, 4099]))
leading_dims = st.lists(st.integers(0, 5), min_size=0, max_size=2).map(tuple) | st.just((1,))


def randn(shape, dtype, gen, device, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu().float(), expected.cpu().float(), **TOL[expected.dtype])


# ------------------------------------------------------------------ norms

@pytest.mark.parametrize("device", DEVICES)
@examples(40)
@given(lead=leading_dims, hidden=hidden_sizes, xd=dtypes, wd=dtypes, eps=st.sampled_from([1e-5, 1e-6]),
       seed=seeds)
def test_rms_norm_matches_reference(device, lead, hidden, xd, wd, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn((*lead, hidden), xd, gen, device, scale=3.0)
    w = randn((hidden,), wd, gen, device)
    assert_close(ops.rms_norm(x, w, eps), ops.rms_norm_ref(x, w, eps))


@pytest.mark.parametrize("device", DEVICES)
@examples(40)
@given(lead=leading_dims, hidden=hidden_sizes, xd=dtypes, rd=dtypes, wd=dtypes, seed=seeds)
def test_fused_add_rms_norm_matches_reference(device, lead, hidden, xd, rd, wd, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn((*lead, hidden), xd, gen, device)
    residual = randn((*lead, hidden), rd, gen, device, scale=4.0)
    w = randn((hidden,), wd, gen, device)
    out, summed = ops.fused_add_rms_norm(x, residual, w, 1e-5)
    ref_out, ref_summed = ops.fused_add_rms_norm_ref(x, residual, w, 1e-5)
    assert_close(summed, ref_summed)
    assert_close(out, ref_out)


@pytest.mark.parametrize("device", DEVICES)
@examples(40)
@given(lead=leading_dims, hidden=hidden_sizes, xd=dtypes, wd=dtypes, with_bias=st.booleans(),
       offset=st.sampled_from([0.0, 5.0, -100.0]), seed=seeds)
def test_layer_norm_matches_reference(device, lead, hidden, xd, wd, with_bias, offset, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (randn((*lead, hidden), torch.float32, gen, device) + offset).to(xd)  # a mean far from 0 too
    w = randn((hidden,), wd, gen, device)
    b = randn((hidden,), wd, gen, device) if with_bias else None
    # With a large mean the float32 reference loses digits to cancellation (the kernels keep them:
    # the CPU sums in double, the GPU works relative to the row's first element), so the answer
    # is computed in float64 and rounded to x's dtype once.
    exact = torch.nn.functional.layer_norm(x.double(), (hidden,), w.double(),
                                           None if b is None else b.double(), 1e-5)
    assert_close(ops.layer_norm(x, w, b, 1e-5), exact.to(xd))
    if offset == 0.0:
        assert_close(ops.layer_norm(x, w, b, 1e-5), ops.layer_norm_ref(x, w, b, 1e-5))


def test_layer_norm_reference_is_torch_layer_norm():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 33, generator=gen), torch.randn(33, generator=gen), torch.randn(33, generator=gen)
    expected = torch.nn.functional.layer_norm(x, (33,), w, b, 1e-5)
    torch.testing.assert_close(ops.layer_norm_ref(x, w, b, 1e-5), expected)
    torch.testing.assert_close(ops.layer_norm(x, w, b, 1e-5), expected)


def test_norms_accept_non_contiguous_input():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 10, generator=gen).t()  # [10, 16], strided
    w = torch.randn(16, generator=gen)
    assert_close(ops.rms_norm(x, w, 1e-5), ops.rms_norm_ref(x, w, 1e-5))
    assert_close(ops.layer_norm(x, w, None, 1e-5), ops.layer_norm_ref(x, w, None, 1e-5))


# ------------------------------------------------------------------- rope

@st.composite
def rope_cases(draw):
    head_dim = draw(st.integers(2, 80) | st.sampled_from([64, 128]))
    rotary = 2 * draw(st.integers(1, head_dim // 2))
    return dict(
        tokens=draw(st.integers(0, 9) | st.just(1)),
        hq=draw(st.integers(1, 6)),
        hk=draw(st.integers(1, 3)),
        head_dim=head_dim,
        rotary=rotary,
        max_pos=draw(st.integers(1, 70)),
        theta=draw(st.sampled_from([10000.0, 100000.0, 500.0])),
        neox=draw(st.booleans()),
        qd=draw(dtypes),
        kd=draw(dtypes),
        seed=draw(seeds),
    )


def make_rope_inputs(case, device):
    gen = torch.Generator().manual_seed(case["seed"])
    t, d = case["tokens"], case["head_dim"]
    q = randn((t, case["hq"], d), case["qd"], gen, device)
    k = randn((t, case["hk"], d), case["kd"], gen, device)
    positions = torch.randint(0, case["max_pos"], (t,), generator=gen).to(device)
    cos_sin = ops.rope_cos_sin(case["max_pos"], case["rotary"], case["theta"]).to(device)
    return q, k, positions, cos_sin


@pytest.mark.parametrize("device", DEVICES)
@examples(50)
@given(case=rope_cases())
def test_rope_matches_reference(device, case):
    q, k, positions, cos_sin = make_rope_inputs(case, device)
    q_out, k_out = ops.rope(q, k, positions, cos_sin, case["neox"])
    q_ref, k_ref = ops.rope_ref(q, k, positions, cos_sin, case["neox"])
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)
    r = case["rotary"]  # partial rotary: the rest of each head passes through untouched
    assert torch.equal(q_out[..., r:], q[..., r:]) and torch.equal(k_out[..., r:], k[..., r:])


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@examples(25)
@given(case=rope_cases())
def test_rope_reference_layouts(case):
    """NeoX = Hugging Face's `x * cos + rotate_half(x) * sin`; the normal layout is NeoX applied
    to the pairs (2i, 2i+1) gathered into halves (the GGUF Q/K permutation)."""
    case = dict(case, qd=torch.float64, kd=torch.float64)
    q, k, positions, cos_sin = make_rope_inputs(case, "cpu")
    r, half = case["rotary"], case["rotary"] // 2
    table = cos_sin[positions].double()
    cos = torch.cat([table[:, :half]] * 2, -1)[:, None, :]
    sin = torch.cat([table[:, half:]] * 2, -1)[:, None, :]

    def hf(x):
        rot = x[..., :r] * cos + _rotate_half(x[..., :r]) * sin
        return torch.cat([rot, x[..., r:]], -1)

    close = dict(atol=1e-6, rtol=1e-5)  # the reference computes in float32
    q_neox, k_neox = ops.rope_ref(q, k, positions, cos_sin, True)
    torch.testing.assert_close(q_neox, hf(q), **close)
    torch.testing.assert_close(k_neox, hf(k), **close)

    to_halves = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, case["head_dim"])])
    back = torch.argsort(to_halves)
    q_norm, k_norm = ops.rope_ref(q, k, positions, cos_sin, False)
    torch.testing.assert_close(q_norm, hf(q[..., to_halves])[..., back], **close)
    torch.testing.assert_close(k_norm, hf(k[..., to_halves])[..., back], **close)


def test_rope_accepts_strided_q_k():
    """q and k sliced out of one fused qkv projection, as a model does."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(5, 9 + 3 + 3, 16, generator=gen)
    q, k = qkv[:, :9], qkv[:, 9:12]
    positions = torch.tensor([0, 1, 2, 7, 3])
    cos_sin = ops.rope_cos_sin(8, 16, 10000.0)
    for neox in (True, False):
        for out, ref in zip(ops.rope(q, k, positions, cos_sin, neox), ops.rope_ref(q, k, positions, cos_sin, neox)):
            assert_close(out, ref)


# --------------------------------------------------------------- rope table

@examples(25)
@given(max_pos=st.integers(1, 300), rotary=st.integers(1, 64).map(lambda h: 2 * h),
       theta=st.floats(2.0, 1e6))
def test_rope_cos_sin_table(max_pos, rotary, theta):
    table = ops.rope_cos_sin(max_pos, rotary, theta)
    assert table.shape == (max_pos, rotary) and table.dtype == torch.float32 and table.is_contiguous()
    half = rotary // 2
    freq = torch.tensor([theta ** (-2.0 * i / rotary) for i in range(half)], dtype=torch.float64)
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * freq
    torch.testing.assert_close(table[:, :half].double(), angles.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(table[:, half:].double(), angles.sin(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("params", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_scaling_matches_transformers(params, head_dim):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=8 * head_dim, num_attention_heads=8, head_dim=head_dim,
                                      max_position_embeddings=131072, rope_parameters=dict(params))
    kind = params["rope_type"]
    init = ROPE_INIT_FUNCTIONS[kind] if kind != "default" else None
    if init is None:  # transformers' default: theta ** (-2i/d), the unscaled table
        expected = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    else:
        expected = init(config, "cpu")[0].double()
    mine = rope_inv_freq(head_dim, params["rope_theta"], params)
    torch.testing.assert_close(mine, expected, rtol=1e-6, atol=0)  # transformers works in float32


def test_rope_freq_factors_and_aliases():
    base = rope_inv_freq(8, 10000.0)
    factors = torch.tensor([1.0, 2.0, 4.0, 8.0])
    torch.testing.assert_close(rope_inv_freq(8, 10000.0, {"freq_factors": factors}), base / factors.double())
    torch.testing.assert_close(rope_inv_freq(8, 10000.0, {"type": "linear", "factor": 2.0}), base / 2)
    gguf_style = {"type": "llama3", "factor": 8.0, "original_context_length": 8192}
    hf_style = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
    torch.testing.assert_close(rope_inv_freq(8, 5e5, gguf_style), rope_inv_freq(8, 5e5, hf_style))


@pytest.mark.parametrize("call, match", [
    (lambda: ops.rope_cos_sin(10, 7, 1e4), "rotary_dim"),
    (lambda: ops.rope_cos_sin(0, 8, 1e4), "max_pos"),
    (lambda: ops.rope_cos_sin(10, 8, -1.0), "theta"),
    (lambda: ops.rope_cos_sin(10, 8, 1e4, {"type": "yarn", "factor": 2.0}), "yarn"),
    (lambda: ops.rope_cos_sin(10, 8, 1e4, {"type": "linear"}), "factor"),
    (lambda: ops.rope_cos_sin(10, 8, 1e4, {"type": "linear", "factor": 0}), "factor"),
    (lambda: ops.rope_cos_sin(10, 8, 1e4, {"type": "llama3", "factor": 8.0}), "original_max_position"),
    (lambda: ops.rope_cos_sin(10, 8, 1e4, {"freq_factors": [1.0, 2.0]}), "freq_factors"),
])
def test_rope_cos_sin_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------- activations

@pytest.mark.parametrize("device", DEVICES)
@examples(40)
@given(lead=leading_dims, half=hidden_sizes, dtype=dtypes, scale=st.sampled_from([1.0, 6.0, 40.0]), seed=seeds)
def test_silu_mul_matches_reference(device, lead, half, dtype, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn((*lead, 2 * half), dtype, gen, device, scale=scale)
    out = ops.silu_mul(x)
    assert out.shape == (*lead, half)
    assert_close(out, ops.silu_mul_ref(x))


@pytest.mark.parametrize("device", DEVICES)
@examples(40)
@given(lead=leading_dims, hidden=hidden_sizes, dtype=dtypes, scale=st.sampled_from([1.0, 6.0]), seed=seeds)
def test_gelu_tanh_matches_reference(device, lead, hidden, dtype, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn((*lead, hidden), dtype, gen, device, scale=scale)
    assert_close(ops.gelu_tanh(x), ops.gelu_tanh_ref(x))


@pytest.mark.parametrize("device", DEVICES)
def test_activations_at_extremes(device):
    """exp/tanh saturation: large negative gates give 0, large positive ones the identity."""
    edges = torch.tensor([-1e4, -200.0, -88.5, -87.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 87.0, 88.5, 200.0, 1e4])
    ups = torch.linspace(-3, 3, edges.numel())
    x = torch.cat([edges, ups]).repeat(3, 1).to(device)  # [3, 2F]
    torch.testing.assert_close(ops.silu_mul(x).cpu(), ops.silu_mul_ref(x).cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.gelu_tanh(x).cpu(), ops.gelu_tanh_ref(x).cpu(), atol=1e-5, rtol=1e-5)


def test_gelu_tanh_reference_formula():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(ops.gelu_tanh_ref(x.float()).double(), formula, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------- opcheck

def _opcheck_cases(device, dtype):
    gen = torch.Generator().manual_seed(7)
    x = randn((3, 4, 24), dtype, gen, device)
    w = randn((24,), dtype, gen, device)
    q, k = randn((5, 4, 16), dtype, gen, device), randn((5, 2, 16), dtype, gen, device)
    positions = torch.tensor([0, 3, 1, 9, 2], device=device)
    cos_sin = ops.rope_cos_sin(10, 12, 10000.0).to(device)
    return [
        (torch.ops.pyllm.rms_norm.default, (x, w, 1e-5)),
        (torch.ops.pyllm.fused_add_rms_norm.default, (x, x * 2, w, 1e-5)),
        (torch.ops.pyllm.layer_norm.default, (x, w, w, 1e-5)),
        (torch.ops.pyllm.layer_norm.default, (x, w, None, 1e-5)),
        (torch.ops.pyllm.rope.default, (q, k, positions, cos_sin, True)),
        (torch.ops.pyllm.rope.default, (q, k, positions, cos_sin, False)),
        (torch.ops.pyllm.silu_mul.default, (x,)),
        (torch.ops.pyllm.gelu_tanh.default, (x,)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(8))
def test_opcheck(device, dtype, case):
    op, args = _opcheck_cases(device, dtype)[case]
    opcheck(op, args)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_kernels_are_registered():
    from pyllm import _C

    if not _C.has_cuda:
        pytest.skip("pyllm._C was built without CUDA")
    for name in ("rms_norm", "fused_add_rms_norm", "layer_norm", "rope", "silu_mul", "gelu_tanh"):
        assert hasattr(_C, f"{name}_cuda"), name


# ------------------------------------------------------------ input checks

def _bad_inputs():
    x = torch.randn(2, 8)
    w = torch.randn(8)
    q, k = torch.randn(3, 2, 8), torch.randn(3, 1, 8)
    pos = torch.tensor([0, 1, 2])
    cs = ops.rope_cos_sin(4, 8, 1e4)
    meta = torch.device("meta")
    return [
        ("rms weight shape", lambda: ops.rms_norm(x, torch.randn(7), 1e-5), "weight"),
        ("rms weight 2-D", lambda: ops.rms_norm(x, torch.randn(1, 8), 1e-5), "weight"),
        ("rms int x", lambda: ops.rms_norm(x.to(torch.int32), w, 1e-5), "x must be float"),
        ("rms int weight", lambda: ops.rms_norm(x, w.to(torch.int64), 1e-5), "weight must be float"),
        ("rms devices", lambda: ops.rms_norm(x, w.to(meta), 1e-5), "weight must be on"),
        ("fused residual shape", lambda: ops.fused_add_rms_norm(x, torch.randn(2, 9), w, 1e-5), "residual"),
        ("fused residual dtype", lambda: ops.fused_add_rms_norm(x, x.to(torch.int8), w, 1e-5), "residual"),
        ("fused devices", lambda: ops.fused_add_rms_norm(x, x.to(meta), w, 1e-5), "residual must be on"),
        ("ln bias shape", lambda: ops.layer_norm(x, w, torch.randn(3), 1e-5), "bias"),
        ("ln bias int", lambda: ops.layer_norm(x, w, torch.ones(8, dtype=torch.int32), 1e-5), "bias"),
        ("ln devices", lambda: ops.layer_norm(x, w, w.to(meta), 1e-5), "bias must be on"),
        ("rope q rank", lambda: ops.rope(q.flatten(1), k, pos, cs, True), "q must be"),
        ("rope k head dim", lambda: ops.rope(q, torch.randn(3, 1, 6), pos, cs, True), "k must be"),
        ("rope positions dtype", lambda: ops.rope(q, k, pos.int(), cs, True), "positions must be int64"),
        ("rope positions length", lambda: ops.rope(q, k, pos[:2], cs, True), "positions must be"),
        ("rope position too big", lambda: ops.rope(q, k, torch.tensor([0, 4, 1]), cs, True), "positions must lie"),
        ("rope position negative", lambda: ops.rope(q, k, torch.tensor([0, -1, 1]), cs, True), "positions must lie"),
        ("rope odd rotary", lambda: ops.rope(q, k, pos, torch.randn(4, 7), True), "cos_sin"),
        ("rope rotary > head dim", lambda: ops.rope(q, k, pos, ops.rope_cos_sin(4, 10, 1e4), True), "cos_sin"),
        ("rope cos_sin dtype", lambda: ops.rope(q, k, pos, cs.double(), True), "cos_sin must be float32"),
        ("rope devices", lambda: ops.rope(q, k, pos, cs.to(meta), True), "cos_sin must be on"),
        ("silu odd width", lambda: ops.silu_mul(torch.randn(2, 7)), "x's last dimension"),
        ("silu int", lambda: ops.silu_mul(torch.ones(2, 8, dtype=torch.int64)), "x must be float"),
        ("gelu int", lambda: ops.gelu_tanh(torch.ones(3, dtype=torch.int32)), "x must be float"),
    ]


@pytest.mark.parametrize("name, call, match", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_input_raises_value_error(name, call, match):
    with pytest.raises(ValueError, match=match):
        call()
