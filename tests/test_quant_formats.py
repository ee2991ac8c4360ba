"""GGML block formats: dequantize against the `gguf` package (an independent implementation),
quantize -> dequantize within each format's error bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyllm.weights import quant as Q

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

# Offsets of the fp16 scale fields in each block: random bytes there would give inf/NaN scales,
# which makes the comparison meaningless, so they are overwritten with sane random fp16 values.
SCALE_FIELDS = {"q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0],
                "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208], "q2_k": [80, 82], "q3_k": [108]}
BLOCK_TYPES = list(SCALE_FIELDS)


def random_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = Q.ggml_type(qtype)
    raw = rng.integers(0, 256, (rows, Q.row_bytes(qtype, cols)), dtype=np.uint8)
    blocks = raw.reshape(-1, t.block_bytes)
    for off in SCALE_FIELDS[qtype]:
        scales = (rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), nblocks=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_dequantize_matches_gguf_package(qtype, rows, nblocks, seed):
    t = Q.ggml_type(qtype)
    cols = nblocks * t.block_size
    raw = random_blocks(qtype, rows, cols, seed)
    ref = gguf_dequantize(raw, gguf.GGMLQuantizationType(t.id))
    got = Q.dequantize(torch.from_numpy(raw.copy()), qtype, cols)
    assert got.dtype == torch.float32 and tuple(got.shape) == (rows, cols)
    np.testing.assert_array_equal(got.numpy(), ref.reshape(rows, cols))


NATIVE_BLOCK_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"]
SPECIAL_HALVES = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 65504.0, 6e-8], dtype=np.float16)


@pytest.mark.parametrize("qtype", NATIVE_BLOCK_TYPES)
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 4),
    nblocks=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    specials=st.booleans(),
)
def test_dequantize_any_bytes_matches_gguf_package(qtype, rows, nblocks, seed, specials):
    """Every bit pattern decodes as the gguf package decodes it: raw random bytes (so fp16 scales
    of any exponent, NaN and infinity among them), and scales forced to inf/NaN/zero/extremes."""
    t = Q.ggml_type(qtype)
    cols = nblocks * t.block_size
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, Q.row_bytes(qtype, cols)), dtype=np.uint8)
    if specials:
        blocks = raw.reshape(-1, t.block_bytes)
        for off in SCALE_FIELDS[qtype]:
            pick = rng.choice(SPECIAL_HALVES, blocks.shape[0])
            blocks[:, off : off + 2] = pick.view(np.uint8).reshape(-1, 2)
    with np.errstate(all="ignore"):
        ref = gguf_dequantize(raw, gguf.GGMLQuantizationType(t.id)).reshape(rows, cols)
    got = Q.dequantize(torch.from_numpy(raw.copy()), qtype, cols).numpy()
    assert got.shape == (rows, cols)
    assert np.array_equal(got, ref, equal_nan=True), qtype


@pytest.mark.parametrize("qtype,np_dtype", [("f32", np.float32), ("f16", np.float16)])
def test_dequantize_float_bytes_matches_gguf(qtype, np_dtype):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np_dtype)
    raw = x.view(np.uint8)
    ref = gguf_dequantize(raw, gguf.GGMLQuantizationType(Q.ggml_type(qtype).id))
    got = Q.dequantize(torch.from_numpy(raw.copy()), qtype, 8)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_dequantize_bf16_bytes_matches_gguf():
    bits = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32).view(np.uint32)
    raw = (bits >> 16).astype(np.uint16).view(np.uint8)
    ref = gguf_dequantize(raw, gguf.GGMLQuantizationType.BF16)
    got = Q.dequantize(torch.from_numpy(raw.copy()), "bf16", 6)
    np.testing.assert_array_equal(got.numpy(), ref)
    # and from a bf16 tensor directly
    t = torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(4, 6)
    np.testing.assert_array_equal(Q.dequantize(t, "bf16", 6).numpy(), ref)


def test_type_table_matches_gguf_package():
    for t in Q.GGML_TYPES.values():
        gt = gguf.GGMLQuantizationType(t.id)
        assert gt.name.lower() == t.name
        assert gguf.GGML_QUANT_SIZES[gt] == (t.block_size, t.block_bytes)
    for name, code in Q.QTYPE_CODES.items():
        assert Q.ggml_type(code).name == name


def test_row_bytes_and_errors():
    assert Q.row_bytes("q4_1", 576) == 18 * 20
    assert Q.row_bytes("q8_0", 576) == 18 * 34
    assert Q.row_bytes("f16", 7) == 14
    assert Q.block_size("q6_k") == 256
    with pytest.raises(ValueError, match="multiple"):
        Q.row_bytes("q4_0", 33)
    with pytest.raises(ValueError, match="unknown"):
        Q.ggml_type(4)
    with pytest.raises(ValueError, match="unknown"):
        Q.ggml_type("q9_9")
    with pytest.raises(ValueError, match="whole number"):
        Q.dequantize(torch.zeros(35, dtype=torch.uint8), "q8_0", 32)


# ------------------------------------------------------------------ round trips

def _block_bound(qtype: str, x: torch.Tensor) -> torch.Tensor:
    """Largest error quantize->dequantize may make on each 32-weight block of x (float64).

    Rounding to the nearest code costs half a step; storing the scale (and min) in fp16 costs
    at most the scale's rounding error times the largest code, plus the min's rounding error.
    """
    b = x.double().reshape(-1, 32)
    amax, vmin, vmax = b.abs().amax(1), b.amin(1), b.amax(1)

    def f16_err(v):
        return (v - v.to(torch.float16).double()).abs()

    if qtype == "q8_0":
        d = amax / 127
        return 0.5 * d.to(torch.float16).double() + 127 * f16_err(d)
    if qtype == "q4_0":
        # the largest-magnitude weight maps to -8; the opposite side reaches only +7 steps
        d = amax / 8
        return d.to(torch.float16).double() + 8 * f16_err(d)
    if qtype == "q4_1":
        m16 = vmin.to(torch.float16).double()
        d = (vmax - m16) / 15
        return 0.5 * d.to(torch.float16).double() + 15 * f16_err(d) + f16_err(vmin)
    raise AssertionError(qtype)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), nblocks=st.integers(1, 6), scale=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**32 - 1))
def test_quantize_round_trip_within_bound(qtype, rows, nblocks, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, nblocks * 32, generator=g) * scale
    packed = Q.quantize(w, qtype)
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == (rows, Q.row_bytes(qtype, nblocks * 32))
    back = Q.dequantize(packed, qtype, nblocks * 32)
    err = (back.double() - w.double()).abs().reshape(-1, 32).amax(1)
    bound = _block_bound(qtype, w) * (1 + 1e-6) + 1e-30
    assert (err <= bound).all(), (err - bound).max()
    # the bytes decode identically with the gguf package
    ref = gguf_dequantize(packed.numpy(), gguf.GGMLQuantizationType(Q.ggml_type(qtype).id))
    np.testing.assert_array_equal(back.numpy(), ref)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantize_exact_on_representable_values(qtype):
    # blocks whose values are exactly codes times a power-of-two scale survive unchanged
    g = torch.Generator().manual_seed(0)
    lo, hi = {"q8_0": (-127, 127), "q4_0": (-8, 7), "q4_1": (0, 15)}[qtype]
    codes = torch.randint(lo, hi + 1, (4, 64), generator=g).float()
    codes[:, 0], codes[:, 32] = lo, lo  # pin the extremes that set the scale
    codes[:, 1], codes[:, 33] = hi, hi
    if qtype == "q4_0":  # its scale comes from the largest magnitude, which must be the -8
        codes[:, 1], codes[:, 33] = 7, 7
    w = codes * 0.125
    back = Q.dequantize(Q.quantize(w, qtype), qtype, 64)
    torch.testing.assert_close(back, w, rtol=0, atol=0)


def test_quantize_zero_and_constant_blocks():
    zeros = torch.zeros(2, 64)
    for qtype in ("q8_0", "q4_0", "q4_1"):
        back = Q.dequantize(Q.quantize(zeros, qtype), qtype, 64)
        torch.testing.assert_close(back, zeros, rtol=0, atol=0)
    # q4_1 carries a constant block in its min (scale 0), exactly when the min fits fp16
    const = torch.full((1, 32), 3.0)
    torch.testing.assert_close(Q.dequantize(Q.quantize(const, "q4_1"), "q4_1", 32), const,
                               rtol=0, atol=0)


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(torch.full((1, 32), float("nan")), "q8_0")
    with pytest.raises(ValueError, match="fp16"):
        Q.quantize(torch.full((1, 32), 1e10), "q8_0")
    with pytest.raises(ValueError, match="multiple"):
        Q.quantize(torch.zeros(1, 40), "q4_0")
    with pytest.raises(ValueError, match="not supported"):
        Q.quantize(torch.zeros(1, 256), "q4_k")


@pytest.mark.parametrize("qtype,dtype", [("f32", torch.float32), ("f16", torch.float16),
                                         ("bf16", torch.bfloat16)])
def test_quantize_float_types_cast(qtype, dtype):
    w = torch.randn(3, 5)
    out = Q.quantize(w, qtype)
    assert out.dtype == dtype
    torch.testing.assert_close(Q.dequantize(out, qtype, 5), w.to(dtype).float(), rtol=0, atol=0)
