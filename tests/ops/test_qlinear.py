"""qlinear: every weight type on every CPU instruction-set path against the reference.

The kernels dequantize blocks in registers; the dequantized weights are bit-identical to
pyllm.weights.quant.dequantize, so kernel and reference differ only in the order of float32
additions. The bound used: |kernel - ref| <= 1e-5 * (|x| @ |W|.T + max|x| * max|W|) per output.

Non-finite fp16 scales (possible in random raw bytes) make the outputs that use them non-finite
in both (NaN or +-inf, which one is not specified: the kernels factor the scale out of a chunk's
dot product, so q=0 * inf gives NaN in the reference and inf*sum in the kernel); the finite ones
must still agree.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyllm.ops as ops
from pyllm.ops import _library as L
from pyllm.ops.qlinear import (QTYPE_CODES, QWeight, dequantize_weight, plan, qlinear_int8, qlinear_int8_ref, qlinear_ref,
                               quantize_activations_int8)
from pyllm.weights.quant import quantize, row_bytes

BLOCK_QTYPES = ["q4_0", "q4_1", "q8_0"]
QTYPES = BLOCK_QTYPES + ["f16", "bf16", "f32"]
FLOAT_DTYPE = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
ISA_ORDER = ["baseline", "avx2", "avx512"]

native = pytest.mark.skipif(not L.native(), reason="compiled kernels not in use (PYLLM_KERNELS=reference)")


def _isa_param(name: str):
    marks = []
    if L._C is not None and ISA_ORDER.index(L._C.detected_isa()) < ISA_ORDER.index(name):
        marks.append(pytest.mark.skip(reason=f"this CPU lacks {name.upper()} (has {L._C.detected_isa()})"))
    return pytest.param(name, marks=marks, id=name)


ISAS = [_isa_param(n) for n in ISA_ORDER]


@contextlib.contextmanager
def cpu_isa(name: str):
    """Cap the kernels' instruction set to `name` for the block, then restore."""
    before = L._C.cpu_isa()
    L._C.set_cpu_isa(name)
    try:
        assert L._C.cpu_isa() == name
        yield
    finally:
        L._C.set_cpu_isa(before)


def make_weight(qtype: str, n: int, k: int, gen: torch.Generator, raw_bytes: bool) -> torch.Tensor:
    """Weight storage for `qtype`: quantized from random floats, or (raw_bytes) any bit pattern."""
    if raw_bytes:
        if qtype in BLOCK_QTYPES:
            return torch.randint(0, 256, (n, row_bytes(qtype, k)), dtype=torch.uint8, generator=gen)
        # f16 bit patterns (values up to 65504, NaN and inf included); bf16/f32 random bits would
        # overflow float32 sums in an order-dependent way, so they get random floats below.
        if qtype == "f16":
            return torch.randint(0, 2**16, (n, k), dtype=torch.int32, generator=gen).to(torch.int16).view(torch.float16)
    w = torch.randn(n, k, generator=gen) * 0.5
    return quantize(w, qtype)


def check_close(y: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, wf: torch.Tensor,
                bias: torch.Tensor | None = None) -> None:
    """y within 1e-5 of the sizes summed into each output (|x| @ |W|.T, the largest product, the
    bias: one ulp of a bias that dominates a tiny product is a rounding, not an error) of ref."""
    assert y.shape == ref.shape and y.dtype == torch.float32
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(y), finite), "non-finite outputs differ from the reference"
    if not finite.any():
        return
    wabs = torch.nan_to_num(wf.abs(), nan=0.0, posinf=0.0)
    xabs = x.abs()
    scale = xabs @ wabs.T + xabs.amax(1, keepdim=True) * wabs.amax(1)[None, :] if x.numel() and wf.numel() else torch.zeros_like(ref)
    if bias is not None:
        scale = scale + bias.abs()
    err = (y - ref).abs()
    tol = 1e-5 * scale + 1e-30
    bad = finite & (err > tol)
    assert not bad.any(), f"max error {err[finite].max().item():.3g}, worst ratio {(err / tol)[finite].max().item():.3g}"


@functools.lru_cache(maxsize=8)
def case_data(qtype: str, t: int, k: int, n: int, with_bias: bool, seed: int, raw_bytes: bool):
    """Inputs and the reference output for one case (cached: the ISA paths share them)."""
    gen = torch.Generator().manual_seed(seed)
    w = make_weight(qtype, n, k, gen, raw_bytes)
    x = torch.randn(t, k, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    ref = qlinear_ref(x, w, QTYPE_CODES[qtype], n, bias)
    return w, x, bias, ref, QWeight(w, qtype, n, k).dequantize()


def run_case(qtype: str, isa: str, t: int, k: int, n: int, with_bias: bool, seed: int, raw_bytes: bool) -> None:
    w, x, bias, ref, wf = case_data(qtype, t, k, n, with_bias, seed, raw_bytes)
    code = QTYPE_CODES[qtype]
    with cpu_isa(isa):
        y = ops.qlinear(x, w, code, n, bias)
        check_close(y, ref, x, wf, bias)
        # The model's entry (raw-pointer hot path) runs the same kernel; its thread split may
        # differ (the driver adapts the thread count), so it is held to the same tolerance.
        y2 = ops.linear(x, QWeight(w, qtype, n, k), bias)
        check_close(y2, ref, x, wf, bias)


def k_strategy(qtype: str):
    if qtype in BLOCK_QTYPES:
        return st.integers(0, 64).map(lambda b: 32 * b)
    return st.integers(0, 2048)


SMALL_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QTYPES)
@SMALL_SETTINGS
@given(data=st.data())
def test_qlinear_matches_reference(qtype, isa, data):
    k = data.draw(k_strategy(qtype), label="K")
    t = data.draw(st.integers(1, 70), label="T")
    # Large K or large N, not both (test_qlinear_model_shapes covers big matrices).
    n = data.draw(st.integers(1, max(1, min(300, 150_000 // max(k, 1)))), label="N")
    run_case(qtype, isa, t, k, n, data.draw(st.booleans(), label="bias"),
             data.draw(st.integers(0, 2**31 - 1), label="seed"), raw_bytes=False)


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", BLOCK_QTYPES + ["f16"])
@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 9), kb=st.integers(1, 24), n=st.integers(1, 80), seed=st.integers(0, 2**31 - 1))
def test_qlinear_random_raw_bytes(qtype, isa, t, kb, n, seed):
    """Any bit pattern (subnormal, NaN and infinite fp16 scales included) behaves as the reference."""
    run_case(qtype, isa, t, 32 * kb, n, True, seed, raw_bytes=True)


@native
@pytest.mark.parametrize("qtype", ["q4_1", "q8_0"])
@pytest.mark.parametrize("shape", [(1, 576, 1536), (7, 1536, 576), (33, 576, 192), (64, 2048, 300), (40, 512, 5)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("isa", ISAS)
def test_qlinear_model_shapes(qtype, isa, shape):
    """SmolLM2-like shapes: whole row tiles, token tiles, row blocks and both thread splits."""
    t, k, n = shape
    run_case(qtype, isa, t, k, n, False, 1234, raw_bytes=False)


@native
@pytest.mark.parametrize("threads", [1, 2])
def test_qlinear_thread_counts_agree(threads):
    gen = torch.Generator().manual_seed(0)
    w = quantize(torch.randn(300, 1024, generator=gen), "q4_1")
    x = torch.randn(37, 1024, generator=gen)
    before = L._C.get_num_threads()
    try:
        L._C.set_num_threads(1)
        y1 = ops.qlinear(x, w, QTYPE_CODES["q4_1"], 300, None)
        L._C.set_num_threads(threads)
        y2 = ops.qlinear(x, w, QTYPE_CODES["q4_1"], 300, None)
    finally:
        L._C.set_num_threads(before)
    assert torch.equal(y1, y2)  # each output is computed by one thread in a fixed order


@pytest.mark.parametrize("t,k,n", [(0, 64, 5), (3, 64, 0), (2, 0, 4)])
def test_qlinear_empty(t, k, n):
    w = quantize(torch.randn(n, k), "q8_0")
    bias = torch.randn(n)
    y = ops.qlinear(torch.randn(t, k), w, QTYPE_CODES["q8_0"], n, bias)
    assert y.shape == (t, n)
    if t and n and k == 0:
        assert torch.equal(y, bias.expand(t, n))


def test_linear_entry_shapes_and_out():
    gen = torch.Generator().manual_seed(3)
    wf = torch.randn(48, 64, generator=gen)
    qw = QWeight(quantize(wf, "q4_1"), "q4_1", 48, 64)
    x = torch.randn(2, 3, 64, generator=gen)
    y = ops.linear(x, qw)
    assert y.shape == (2, 3, 48)
    ref = qlinear_ref(x.reshape(6, 64), qw.data, qw.code, 48).reshape(2, 3, 48)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    out = torch.empty(2, 3, 48)
    y2 = ops.linear(x, qw, out=out)
    assert y2.data_ptr() == out.data_ptr() and torch.equal(y2, y)
    # A float tensor [out, in] is accepted as is (any of the three float dtypes).
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = wf.to(dtype)
        torch.testing.assert_close(ops.linear(x, w), x @ w.float().T, rtol=1e-5, atol=1e-4)
    # A non-contiguous activation goes through the op path and gives the same numbers.
    xt = torch.randn(64, 5, generator=gen).T
    torch.testing.assert_close(ops.linear(xt, qw), ops.linear(xt.contiguous(), qw), rtol=0, atol=0)


@native
def test_plan_reads_x_at_call_time():
    gen = torch.Generator().manual_seed(9)
    qw = QWeight(quantize(torch.randn(40, 96, generator=gen), "q4_1"), "q4_1", 40, 96)
    x, out, bias = torch.zeros(1, 96), torch.empty(1, 40), torch.randn(40, generator=gen)
    run = plan(x, qw, out, bias)
    for _ in range(3):
        x.copy_(torch.randn(1, 96, generator=gen))
        run()
        torch.testing.assert_close(out, ops.linear(x, qw, bias), rtol=0, atol=0)
    with pytest.raises(ValueError, match="plan"):
        plan(torch.zeros(1, 64), qw, out)


def test_opcheck():
    gen = torch.Generator().manual_seed(5)
    for qtype in ("q4_1", "f16"):
        k = 64
        w = quantize(torch.randn(9, k, generator=gen), qtype)
        x = torch.randn(3, k, generator=gen)
        for bias in (None, torch.randn(9, generator=gen)):
            torch.library.opcheck(torch.ops.pyllm.qlinear.default, (x, w, QTYPE_CODES[qtype], 9, bias))


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 64)
        w = torch.empty(7, row_bytes("q4_0", 64), dtype=torch.uint8)
        y = torch.ops.pyllm.qlinear(x, w, QTYPE_CODES["q4_0"], 7, None)
    assert y.shape == (5, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x=torch.randn(2, 64, dtype=torch.float16)), "x must be float32"),
        (dict(x=torch.randn(2, 3, 64)), r"x must be \[T, K\]"),
        (dict(x=torch.randn(2, 96)), "weight must be"),
        (dict(x=torch.randn(2, 48), weight=torch.zeros(4, 30, dtype=torch.uint8)), "multiple of 32"),
        (dict(weight=torch.zeros(4, 36)), "weight must be uint8"),
        (dict(weight=torch.zeros(5, 68, dtype=torch.uint8)), r"weight must be \[4, 68\]"),
        (dict(qtype=5), "qtype must be one of"),
        (dict(bias=torch.zeros(5)), r"bias must be \[4\]"),
        (dict(bias=torch.zeros(4, dtype=torch.float64)), "bias must be float32"),
        (dict(qtype=QTYPE_CODES["f16"], weight=torch.zeros(4, 64)), "weight must be torch.float16"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, match):
    args = dict(x=torch.randn(2, 64), weight=torch.zeros(4, row_bytes("q8_0", 64), dtype=torch.uint8),
                qtype=QTYPE_CODES["q8_0"], out_features=4, bias=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.qlinear(args["x"], args["weight"], args["qtype"], args["out_features"], args["bias"])


def test_qweight_validates():
    with pytest.raises(ValueError, match="qtype must be one of"):
        QWeight(torch.zeros(2, 84, dtype=torch.uint8), "q2_k", 2, 256)
    with pytest.raises(ValueError, match=r"weight must be \[2, 18\]"):
        QWeight(torch.zeros(2, 20, dtype=torch.uint8), "q4_0", 2, 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        QWeight(torch.zeros(2, 18, dtype=torch.uint8), "q4_0", 2, 33)
    qw = QWeight(torch.zeros(2, 18, dtype=torch.uint8), "q4_0", 2, 32)
    with pytest.raises(ValueError, match="in_features 32"):
        ops.linear(torch.randn(3, 64), qw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not L.cuda_built(), reason="pyllm built without CUDA")
@pytest.mark.parametrize("family", ["general", "tuned"])
@pytest.mark.parametrize("qtype", QTYPES)
@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 140), kb=st.integers(1, 40), n=st.integers(1, 300), with_bias=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_qlinear_cuda_matches_reference(family, qtype, t, kb, n, with_bias, seed):
    """Token counts across every CUDA path: the GEMV (<= 8), the tuned split-K tile (9..128, one
    or several 32-token tiles) and the 64x64 tile."""
    gen = torch.Generator().manual_seed(seed)
    k = 32 * kb
    w = make_weight(qtype, n, k, gen, raw_bytes=False)
    x = torch.randn(t, k, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    code = QTYPE_CODES[qtype]
    ref = qlinear_ref(x, w, code, n, bias)
    with ops.using_cuda_kernels(family):
        y = ops.qlinear(x.cuda(), w.cuda(), code, n, None if bias is None else bias.cuda()).cpu()
    check_close(y, ref, x, QWeight(w, qtype, n, k).dequantize(), bias)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not L.cuda_built(), reason="pyllm built without CUDA")
@pytest.mark.parametrize("qtype", BLOCK_QTYPES)
@pytest.mark.parametrize("t", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n,k", [(1, 32), (45, 96), (300, 576), (7, 1536), (5, 32 * 41)])
def test_tuned_gemv_is_bit_identical_to_the_general_one(qtype, t, n, k):
    """Up to 8 tokens the tuned GEMV only issues its loads earlier (four chunks at once, x as
    float4): the multiply-adds are the general GEMV's, in the same order."""
    gen = torch.Generator().manual_seed(t * n + k)
    w = make_weight(qtype, n, k, gen, raw_bytes=False).cuda()
    x = torch.randn(t, k, generator=gen).cuda()
    outs = {}
    for family in ("general", "tuned"):
        with ops.using_cuda_kernels(family):
            outs[family] = ops.qlinear(x, w, QTYPE_CODES[qtype], n)
    assert torch.equal(outs["tuned"], outs["general"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not L.cuda_built(), reason="pyllm built without CUDA")
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n,k", [(1, 32), (45, 96), (300, 576), (7, 1536)])
def test_dequantize_cuda_is_the_reference_bit_for_bit(qtype, n, k):
    """The tuned prefill path's dequantization (any bit pattern of the blocks) equals the
    reference's: q*d, (q-8)*d and q*d+m are single roundings either way."""
    gen = torch.Generator().manual_seed(n * k)
    w = make_weight(qtype, n, k, gen, raw_bytes=True)
    code = QTYPE_CODES[qtype]
    want = dequantize_weight(w, code, k)
    got = torch.empty(n, k, device="cuda")
    L._C.dequantize_cuda(L.view(w.cuda()), code, L.view(got), torch.cuda.current_stream().cuda_stream)
    # exactly equal, infinities included; NaN where the reference has NaN (payloads may differ:
    # GPUs return a canonical NaN)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not L.cuda_built(), reason="pyllm built without CUDA")
@pytest.mark.parametrize("family", ["general", "tuned"])
@pytest.mark.parametrize("qtype", ["f16", "bf16", "f32"])
@pytest.mark.parametrize("k", [4, 36, 100, 3, 37])
def test_qlinear_cuda_float_weights_of_any_width(family, qtype, k):
    """Float weights need not be 32 wide: a partial last chunk (K % 4 == 0 for the split-K tile's
    float4 loads; odd K falls back to the general tile) and x a view at an odd offset."""
    gen = torch.Generator().manual_seed(k)
    w = make_weight(qtype, 45, k, gen, raw_bytes=False)
    code = QTYPE_CODES[qtype]
    for t in (5, 9, 40, 129):
        x = torch.randn(t, k + 1, generator=gen)[:, 1:].contiguous()
        x_offset = torch.randn(t * k + 1, generator=gen).cuda()[1:].view(t, k)  # 4-byte aligned only
        x_offset.copy_(x.cuda())
        ref = qlinear_ref(x, w, code, 45, None)
        with ops.using_cuda_kernels(family):
            for xc in (x.cuda(), x_offset):
                y = ops.qlinear(xc, w.cuda(), code, 45, None).cpu()
                check_close(y, ref, x, QWeight(w, qtype, 45, k).dequantize())


# ------------------------------------------------- the opt-in int8-activation path

INT8_ISAS = ISAS


def int8_error_bound(x: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """How far the int8 path may be from the exact product: each activation moves by at most half
    its block's step (scale / 2) when quantized, and meets the whole dequantized weight, so
    |int8 - exact| <= sum_b scale_b / 2 * sum_{k in b} |W_k|."""
    _, scale = quantize_activations_int8(x)  # [T, K/32]
    return (scale / 2) @ wf.abs().reshape(wf.shape[0], -1, 32).sum(-1).T


@native
@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("qtype", BLOCK_QTYPES)
@SMALL_SETTINGS
@given(t=st.integers(1, 40), kb=st.integers(1, 40), n=st.integers(1, 120), with_bias=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_qlinear_int8_matches_its_reference(qtype, isa, t, kb, n, with_bias, seed):
    """The int8 kernels compute exactly qlinear_int8_ref (integer dot products are exact; only float32
    rounding of the scaled block sums differs), and stay within the quantization bound of the exact op."""
    gen = torch.Generator().manual_seed(seed)
    k = 32 * kb
    w = make_weight(qtype, n, k, gen, raw_bytes=False)
    x = torch.randn(t, k, generator=gen) * torch.rand(t, 1, generator=gen) * 4
    x[:, :32] = 0.0 if seed % 3 == 0 else x[:, :32]  # an all-zero block (scale 0)
    bias = torch.randn(n, generator=gen) if with_bias else None
    code = QTYPE_CODES[qtype]
    qw = QWeight(w, qtype, n, k)
    wf = qw.dequantize()
    with cpu_isa(isa):
        y = L._C.qlinear_cpu  # the bound entry, with the flag
        out = torch.empty(t, n)
        y(L.view(x), L.view(w), code, None if bias is None else L.view(bias), L.view(out), int8_act=True)
        if bias is None:
            assert torch.equal(out, qlinear_int8(x, qw))
        packed = torch.empty(t, n)  # on panels packed ahead, as the runner packs them (AVX-512)
        y(L.view(x), L.view(w), code, None if bias is None else L.view(bias), L.view(packed), int8_act=True,
          prepack=True)
        assert torch.equal(packed, out)
    ref = qlinear_int8_ref(x, w, code, n, bias)
    xq, scale = quantize_activations_int8(x)
    xhat = (xq * scale.unsqueeze(-1)).reshape(t, k)
    check_close(out, ref, xhat.abs() + x.abs(), wf)
    exact = qlinear_ref(x, w, code, n, bias)
    slack = 1e-5 * (x.abs() @ wf.abs().T) + 1e-6
    assert ((out - exact).abs() <= int8_error_bound(x, wf) + slack).all()


@native
def test_qlinear_int8_quantizer_matches_reference():
    """The activation codes, scales and sums the kernels use are the reference's (round half to even
    included): checked through a one-hot weight that reads back single codes."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 64, generator=gen)
    x[0, :32] = torch.arange(32) * (1.0 / 127.0)  # exact .5 ties after scaling by 127 / max
    x[1, 32:] = 0.0
    eye = quantize(torch.eye(64) * 127, "q8_0")  # d = 1, code 127: row j reads 127 * x_hat[j]
    codes, scale = quantize_activations_int8(x)
    expect = (codes * scale.unsqueeze(-1)).reshape(5, 64) * 127
    got = qlinear_int8(x, QWeight(eye, "q8_0", 64, 64))
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-7)


@native
def test_qlinear_int8_refuses_float_weights():
    w = QWeight(torch.randn(8, 64), "f32", 8, 64)
    with pytest.raises(ValueError, match="int8"):
        qlinear_int8(torch.randn(2, 64), w)
