"""qlinear on the CPU for the block types with a portable kernel only: Q5_0, Q5_1 (blocks of
32) and the K-quants Q4_K, Q5_K, Q6_K (super-blocks of 256), against the reference
(x @ dequantize(W).T). Their CUDA kernel is checked on the emulator by test_cuda_emulated.py.

The weights are random bytes: with sane fp16 scales, or raw (any scale bit pattern, NaN and
infinity included: outputs the reference makes non-finite must be non-finite from the kernel too).
Every instruction-set cap runs the same portable kernel; each is checked, since the driver picks
per call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyllm.ops as ops
from pyllm.ops import _library as L
from pyllm.ops.qlinear import QWeight, qlinear_int8, qlinear_ref
from pyllm.weights.quant import OP_QTYPE_CODES, block_size, row_bytes

from test_qlinear import ISAS, check_close, cpu_isa, native

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


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_path_refuses_these_types(qtype):
    k = block_size(qtype)
    w = random_weight(qtype, 3, k, 1, False)
    with pytest.raises(ValueError, match="the int8 path takes"):
        qlinear_int8(torch.randn(2, k), QWeight(w, qtype, 3, k))
