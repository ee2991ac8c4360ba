"""qlinear for Q5_0, Q5_1 (blocks of 32) and the K-quants Q4_K, Q5_K, Q6_K (super-blocks of 256)
against the reference (x @ dequantize(W).T): the CPU kernels here, the CUDA kernel on a GPU at the
end (and on the emulator by test_cuda_emulated.py).

The weights are random bytes: with sane fp16 scales, or raw (any scale bit pattern, NaN and
infinity included: outputs the reference makes non-finite must be non-finite from the kernel too).
Each instruction-set cap is checked (the portable kernels without AVX2, the AVX2 ones, AVX-512's
one-token exact and VNNI int8 kernels), for the exact and the int8-activation kernels, the latter
per call and on panels packed ahead as the model's runner packs them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qlinear import ISAS, check_close, cpu_isa, int8_error_bound, native

import pyllm.ops as ops
from pyllm.ops import _library as L
from pyllm.ops.qlinear import (
    QWeight,
    qlinear_int8,
    qlinear_int8_ref,
    qlinear_ref,
    quantize_activations_int8,
)
from pyllm.weights.quant import OP_QTYPE_CODES, block_size, row_bytes

# Offsets of each block's fp16 scale fields.
SCALE_FIELDS = {"q5_0": [0], "q5_1": [0, 2], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208]}
QTYPES = list(SCALE_FIELDS)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_weight(qtype: str, n: int, k: int, seed: int, raw: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, row_bytes(qtype, k)), dtype=np.uint8)
    if not raw and data.size:
        blocks = data.reshape(-1, data.shape[1] // (k // block_size(qtype)))
        for off in SCALE_FIELDS[qtype]:
            scales = (rng.standard_normal(blocks.shape[0]) * 0.01).astype(np.float16)
            blocks[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(data)


def run(qtype: str, isa: str, t: int, k: int, n: int, with_bias: bool, seed: int, raw: bool):
    gen = torch.Generator().manual_seed(seed)
    w = random_weight(qtype, n, k, seed, raw)
    x = torch.randn(t, k, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    code = OP_QTYPE_CODES[qtype]
    qw = QWeight(w, qtype, n, k)
    ref = qlinear_ref(x, w, code, n, bias)
    wf = qw.dequantize()
    with cpu_isa(isa):
        check_close(ops.qlinear(x, w, code, n, bias), ref, x, wf, bias)
        check_close(ops.linear(x, qw, bias), ref, x, wf, bias)  # the raw-pointer hot path


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QTYPES)
@SETTINGS
@given(
    t=st.integers(0, 9),
    nblocks=st.integers(0, 3),
    n=st.integers(0, 24),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    raw=st.booleans(),
)
def test_matches_reference(isa, qtype, t, nblocks, n, with_bias, seed, raw):
    run(qtype, isa, t, nblocks * block_size(qtype), n, with_bias, seed, raw)


@native
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("t,k,n", [(1, 2048, 300), (33, 512, 70)])
def test_threaded_shapes(qtype, t, k, n):
    """Enough work for the driver to split rows (decode) or tokens over its threads."""
    run(qtype, "baseline", t, k, n, True, 7, False)
    run(qtype, L._C.detected_isa(), t, k, n, False, 8, False)


@pytest.mark.parametrize("qtype", ["q4_k", "q5_k", "q6_k"])
def test_k_quant_rows_must_be_whole_super_blocks(qtype):
    code = OP_QTYPE_CODES[qtype]
    with pytest.raises(ValueError, match=f"multiple of 256 for {qtype}, got 96"):
        ops.qlinear(torch.zeros(1, 96), torch.zeros(2, 3 * 48, dtype=torch.uint8), code, 2)
    with pytest.raises(ValueError, match="multiple of 256"):
        QWeight(torch.zeros(2, 100, dtype=torch.uint8), qtype, 2, 96)


@native
def test_the_native_entry_rechecks_the_block_size():
    x, out = torch.zeros(1, 96), torch.zeros(1, 2)
    w = torch.zeros(2, 144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="256 for the K-quants"):
        L._C.qlinear_cpu_ptr(
            x.data_ptr(), w.data_ptr(), OP_QTYPE_CODES["q4_k"], 0, out.data_ptr(), 1, 96, 2
        )


@native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QTYPES)
@SETTINGS
@given(
    t=st.integers(1, 9),
    nblocks=st.integers(1, 3),
    n=st.integers(1, 40),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_int8_path_matches_its_reference(isa, qtype, t, nblocks, n, with_bias, seed):
    """The int8-activation kernels compute qlinear_int8_ref (exact integer dot products per
    32-weight group; only float32 rounding of the scaled sums differs) and stay within the
    activations' quantization bound of the exact op."""
    k = nblocks * block_size(qtype)
    gen = torch.Generator().manual_seed(seed)
    w = random_weight(qtype, n, k, seed, raw=False)
    x = torch.randn(t, k, generator=gen) * torch.rand(t, 1, generator=gen) * 4
    if seed % 3 == 0:
        x[:, :32] = 0.0  # an all-zero activation block (scale 0)
    bias = torch.randn(n, generator=gen) if with_bias else None
    code = OP_QTYPE_CODES[qtype]
    qw = QWeight(w, qtype, n, k)
    wf = qw.dequantize()
    xq, scale = quantize_activations_int8(x)
    xhat = (xq * scale.unsqueeze(-1)).reshape(t, k)
    ref = qlinear_int8_ref(x, w, code, n, bias)
    exact = qlinear_ref(x, w, code, n, bias)
    slack = 1e-5 * (x.abs() @ wf.abs().T) + 1e-6
    for prepack in (False, True):  # per call, and on panels packed ahead (AVX-512: Q5_0/Q5_1)
        out = torch.empty(t, n)
        with cpu_isa(isa):
            L._C.qlinear_cpu(
                L.view(x), L.view(w), code, None if bias is None else L.view(bias), L.view(out),
                int8_act=True, prepack=prepack,
            )
            if bias is None and not prepack:  # the op entry (which kernel runs can depend on
                # how the driver splits the tokens over its threads: equal up to rounding)
                check_close(qlinear_int8(x, qw), ref, xhat.abs() + x.abs(), wf)
        check_close(out, ref, xhat.abs() + x.abs(), wf)
        assert ((out - exact).abs() <= int8_error_bound(x, wf) + slack).all()


@native
@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_threaded_prefill_shape(qtype):
    """Many tokens over the threads (the token blocks of the kernel) against the reference."""
    t, k, n = 70, 512, 40
    w = random_weight(qtype, n, k, 3, raw=False)
    x = torch.randn(t, k, generator=torch.Generator().manual_seed(3))
    qw = QWeight(w, qtype, n, k)
    out = qlinear_int8(x, qw)
    check_close(out, qlinear_int8_ref(x, w, OP_QTYPE_CODES[qtype], n), x.abs() * 2, qw.dequantize())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not L.cuda_built(), reason="pyllm built without CUDA")
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("t,nblocks,n", [(1, 3, 70), (5, 1, 33), (40, 2, 129)])
def test_cuda_kernel_matches_reference(qtype, raw, t, nblocks, n):
    """The plain CUDA kernel (csrc/quant/qlinear_superblock.cu) on a real GPU: decode and
    prefill-sized steps, sane and raw scale bytes (the emulator runs the same checks on the CPU)."""
    k = nblocks * block_size(qtype)
    w = random_weight(qtype, n, k, 5, raw)
    x = torch.randn(t, k, generator=torch.Generator().manual_seed(5))
    code = OP_QTYPE_CODES[qtype]
    ref = qlinear_ref(x, w, code, n, None)
    y = ops.qlinear(x.cuda(), w.cuda(), code, n, None).cpu()
    check_close(y, ref, x, QWeight(w, qtype, n, k).dequantize())
