"""GGML block formats: type ids, block geometry, dequantize and quantize.

A row of a quantized weight matrix is a run of fixed-size blocks; each block packs `block_size`
weights with their scale(s). The layouts (all little-endian):

  Q8_0  32 weights, 34 bytes: fp16 d, 32 x int8 q            -> q * d
  Q4_0  32 weights, 18 bytes: fp16 d, 16 bytes of nibbles     -> (q - 8) * d
  Q4_1  32 weights, 20 bytes: fp16 d, fp16 m, 16 nibble bytes -> q * d + m
  Q5_0  32 weights, 22 bytes: fp16 d, u32 high bits, 16 nibble bytes -> (q - 16) * d
  Q5_1  32 weights, 24 bytes: fp16 d, fp16 m, u32 high bits, 16 nibble bytes -> q * d + m
  (nibble byte j holds weight j in its low half and weight j + 16 in its high half; for the
  5-bit types bit j of the u32 is the fifth bit of weight j)

The K-quants pack 256 weights in a super-block with an fp16 scale (and min) over small
sub-block scales:

  Q4_K  144 bytes: fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks
        of 32, 128 nibble bytes. Each 64-weight chunk c uses 32 bytes: low nibbles are
        sub-block 2c, high nibbles sub-block 2c + 1. Weight = d * sc * q - dmin * mn.
  Q5_K  176 bytes: as Q4_K plus 32 bytes of high bits (qh) before the nibbles; weight l of
        chunk c takes bit 2c (low-nibble half) or bit 2c + 1 (high half) of qh[l].
  Q6_K  210 bytes: 128 bytes of low nibbles (ql), 64 bytes of 2-bit high parts (qh), 16 int8
        sub-block scales (16 weights each), fp16 d. Weight = d * scale * (q6 - 32).

`dequantize` is exact: it returns the float32 value the format defines for every weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str  # lower-case qtype string, e.g. "q4_1"
    block_size: int  # weights per block (1 for plain element types)
    block_bytes: int


# GGML's type numbering (ggml.h); ids 4, 5 (removed Q4_2/Q4_3) and 31-33 are unused.
_TYPES = [
    GGMLType(0, "f32", 1, 4),
    GGMLType(1, "f16", 1, 2),
    GGMLType(2, "q4_0", 32, 18),
    GGMLType(3, "q4_1", 32, 20),
    GGMLType(6, "q5_0", 32, 22),
    GGMLType(7, "q5_1", 32, 24),
    GGMLType(8, "q8_0", 32, 34),
    GGMLType(9, "q8_1", 32, 40),
    GGMLType(10, "q2_k", 256, 84),
    GGMLType(11, "q3_k", 256, 110),
    GGMLType(12, "q4_k", 256, 144),
    GGMLType(13, "q5_k", 256, 176),
    GGMLType(14, "q6_k", 256, 210),
    GGMLType(15, "q8_k", 256, 292),
    GGMLType(16, "iq2_xxs", 256, 66),
    GGMLType(17, "iq2_xs", 256, 74),
    GGMLType(18, "iq3_xxs", 256, 98),
    GGMLType(19, "iq1_s", 256, 50),
    GGMLType(20, "iq4_nl", 32, 18),
    GGMLType(21, "iq3_s", 256, 110),
    GGMLType(22, "iq2_s", 256, 82),
    GGMLType(23, "iq4_xs", 256, 136),
    GGMLType(24, "i8", 1, 1),
    GGMLType(25, "i16", 1, 2),
    GGMLType(26, "i32", 1, 4),
    GGMLType(27, "i64", 1, 8),
    GGMLType(28, "f64", 1, 8),
    GGMLType(29, "iq1_m", 256, 56),
    GGMLType(30, "bf16", 1, 2),
    GGMLType(34, "tq1_0", 256, 54),
    GGMLType(35, "tq2_0", 256, 66),
]
GGML_TYPES: dict[int, GGMLType] = {t.id: t for t in _TYPES}
TYPES_BY_NAME: dict[str, GGMLType] = {t.name: t for t in _TYPES}

# The types the kernels compute on (their GGML ids are the codes passed to the qlinear op and the
# C++ runner; the block types' sizes are csrc/common/quant_blocks.h's structs, checked against
# this table by tests/test_quant_blocks.py).
KERNEL_QTYPES = ("f32", "f16", "q4_0", "q4_1", "q8_0", "bf16")
QTYPE_CODES: dict[str, int] = {name: TYPES_BY_NAME[name].id for name in KERNEL_QTYPES}
# The kernels' block types: bytes per block of KERNEL_BLOCK weights.
KERNEL_BLOCK_BYTES: dict[str, int] = {
    name: TYPES_BY_NAME[name].block_bytes
    for name in KERNEL_QTYPES
    if TYPES_BY_NAME[name].block_size > 1
}
KERNEL_BLOCK = 32
# Block types the qlinear op computes on with plain exact kernels only (portable C++,
# csrc/quant/qlinear_superblock.cpp, and an untuned CUDA kernel, qlinear_superblock.cu); the
# fused C++ runner, the int8-activation path and the tuned CUDA kernels take KERNEL_QTYPES.
PLAIN_KERNEL_QTYPES = ("q5_0", "q5_1", "q4_k", "q5_k", "q6_k")
# Every type the qlinear op takes: its code (the GGML id) by name.
OP_QTYPE_CODES: dict[str, int] = {
    name: TYPES_BY_NAME[name].id for name in KERNEL_QTYPES + PLAIN_KERNEL_QTYPES
}
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
}
# Types `dequantize` decodes itself; others known to `gguf.quants` are decoded through it.
NATIVE_DEQUANT = frozenset(
    {
        "f32",
        "f16",
        "bf16",
        "f64",
        "i8",
        "i16",
        "i32",
        "i64",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q8_0",
        "q4_k",
        "q5_k",
        "q6_k",
    }
)
_INT_DTYPES = {
    "f64": torch.float64,
    "i8": torch.int8,
    "i16": torch.int16,
    "i32": torch.int32,
    "i64": torch.int64,
}


def ggml_type(qtype: str | int) -> GGMLType:
    """Look a type up by qtype string ("q4_1") or GGML id (3); ValueError if unknown."""
    if isinstance(qtype, int):
        if qtype not in GGML_TYPES:
            raise ValueError(f"unknown GGML type id {qtype}")
        return GGML_TYPES[qtype]
    key = qtype.lower()
    if key not in TYPES_BY_NAME:
        raise ValueError(f"unknown quantization type {qtype!r}")
    return TYPES_BY_NAME[key]


def block_size(qtype: str | int) -> int:
    """Weights per block (1 for f32/f16/bf16)."""
    return ggml_type(qtype).block_size


def block_bytes(qtype: str | int) -> int:
    """Bytes per block."""
    return ggml_type(qtype).block_bytes


def row_bytes(qtype: str | int, cols: int) -> int:
    """Bytes of one row of `cols` weights; cols must be a whole number of blocks."""
    t = ggml_type(qtype)
    if cols < 0 or cols % t.block_size:
        raise ValueError(
            f"{t.name}: row length {cols} is not a multiple of the block size {t.block_size}"
        )
    return cols // t.block_size * t.block_bytes


# ------------------------------------------------------------------ dequantize


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[N, 2] uint8 -> [N, 1] float32 (little-endian fp16)."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[N, 16] bytes -> [N, 32] values: low nibbles are weights 0..15, high nibbles 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[N, 4] bytes (a little-endian u32) -> [N, 32] bits, bit j for weight j."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (qh.unsqueeze(-1) >> shifts) & 1  # [N, 4, 8]
    return bits.reshape(qh.shape[0], 32)


def _deq_q8_0(b):
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _deq_q4_0(b):
    return (_nibbles(b[:, 2:]).float() - 8.0) * _f16(b[:, :2])


def _deq_q4_1(b):
    return _nibbles(b[:, 4:]).float() * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _deq_q5_0(b):
    q = _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
    return (q.float() - 16.0) * _f16(b[:, :2])


def _deq_q5_1(b):
    q = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)
    return q.float() * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _k_scales_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 packed bytes -> 8 six-bit scales and 8 six-bit mins ([N, 8] each).

    Sub-blocks 0..3: scale = s[j] & 63, min = s[j + 4] & 63. Sub-blocks 4..7 keep their low four
    bits in s[j + 4] (scale low nibble, min high nibble) and their top two bits in the top two
    bits of s[j - 4] (scale) and s[j] (min).
    """
    lo_sc, lo_mn, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc_hi = (hi & 0x0F) | ((lo_sc >> 6) << 4)
    mn_hi = (hi >> 4) | ((lo_mn >> 6) << 4)
    return torch.cat([lo_sc & 63, sc_hi], 1), torch.cat([lo_mn & 63, mn_hi], 1)


def _k_chunks(qs: torch.Tensor) -> torch.Tensor:
    """[N, 128] nibble bytes -> [N, 8, 32] 4-bit values per sub-block (see module doc)."""
    q = qs.reshape(-1, 4, 1, 32)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(-1, 8, 32)


def _deq_q4_k(b):
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales_mins(b[:, 4:16])
    q = _k_chunks(b[:, 16:144]).float()
    y = (d * sc.float()).unsqueeze(-1) * q - (dmin * mn.float()).unsqueeze(-1)
    return y.reshape(-1, 256)


def _deq_q5_k(b):
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48]  # [N, 32]: bit i of qh[l] is the fifth bit of weight l of sub-block i
    shifts = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
    high = (qh.unsqueeze(1) >> shifts) & 1  # [N, 8, 32]
    q = (_k_chunks(b[:, 48:176]) | (high << 4)).float()
    y = (d * sc.float()).unsqueeze(-1) * q - (dmin * mn.float()).unsqueeze(-1)
    return y.reshape(-1, 256)


def _deq_q6_k(b):
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)  # half h, 32-byte group g
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)  # half h
    scales = b[:, 192:208].contiguous().view(torch.int8).float()  # [N, 16], 16 weights each
    d = _f16(b[:, 208:210])
    # Within a 128-weight half: quarter k (32 weights) takes nibble (k // 2: low, high) of ql
    # group k % 2 and bits 2k..2k+1 of qh.
    low = torch.stack(
        [ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2
    )  # [N, 2, 4, 32]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    high = (qh >> shifts) & 3  # [N, 2, 4, 32]
    q = (low | (high << 4)).float() - 32.0
    y = q.reshape(-1, 16, 16) * (d * scales).unsqueeze(-1)
    return y.reshape(-1, 256)


_DEQUANT = {
    "q8_0": _deq_q8_0,
    "q4_0": _deq_q4_0,
    "q4_1": _deq_q4_1,
    "q5_0": _deq_q5_0,
    "q5_1": _deq_q5_1,
    "q4_k": _deq_q4_k,
    "q5_k": _deq_q5_k,
    "q6_k": _deq_q6_k,
}


def dequantize(raw: torch.Tensor, qtype: str | int, cols: int) -> torch.Tensor:
    """Decode GGML data into float32 [rows, cols].

    `raw` is either the uint8 bytes (any shape; rows inferred from the byte count) or, for
    f32/f16/bf16, a tensor of that dtype with `cols` elements a row.
    """
    t = ggml_type(qtype)
    rb = row_bytes(t.name, cols)
    if t.name in FLOAT_DTYPES and raw.dtype == FLOAT_DTYPES[t.name]:
        return raw.reshape(-1, cols).float()
    if raw.dtype != torch.uint8:
        raise ValueError(f"{t.name}: expected uint8 bytes, got {raw.dtype}")
    flat = raw.contiguous().reshape(-1)
    if rb == 0:
        return torch.zeros(0, cols, dtype=torch.float32)
    if flat.numel() % rb:
        raise ValueError(
            f"{t.name}: {flat.numel()} bytes is not a whole number of rows of {rb} bytes"
        )
    rows = flat.numel() // rb
    if t.name in FLOAT_DTYPES:
        return flat.view(FLOAT_DTYPES[t.name]).reshape(rows, cols).float()
    if t.name in _INT_DTYPES:
        return flat.view(_INT_DTYPES[t.name]).reshape(rows, cols).float()
    if t.name in _DEQUANT:
        blocks = flat.reshape(-1, t.block_bytes)
        return _DEQUANT[t.name](blocks).reshape(rows, cols)
    return _dequantize_via_gguf(flat, t, rows, cols)


def _dequantize_via_gguf(flat: torch.Tensor, t: GGMLType, rows: int, cols: int) -> torch.Tensor:
    """Exotic types (Q2_K, Q3_K, IQ*, TQ*): decoded by the `gguf` package's numpy code."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    try:
        out = gguf_dequantize(flat.numpy().reshape(rows, -1), GGMLQuantizationType(t.id))
    except NotImplementedError as e:
        raise ValueError(f"no dequantizer for GGML type {t.name}") from e
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(rows, cols)


# ------------------------------------------------------------------ quantize


def _to_f16_bytes(x: torch.Tensor) -> torch.Tensor:
    """[N] float32 -> [N, 2] uint8."""
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def _check_finite_scale(name: str, scale: torch.Tensor) -> None:
    if not torch.isfinite(scale).all():
        raise ValueError(f"{name}: weights too large for an fp16 block scale (or not finite)")


def _quant_q8_0(x):  # x [N, 32]
    amax = x.abs().amax(1)
    d = (amax / 127).to(torch.float16)
    _check_finite_scale("q8_0", d)
    df = d.float()
    inv = torch.where(df > 0, 1.0 / df, torch.zeros_like(df))
    q = torch.round(x * inv.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return torch.cat([_to_f16_bytes(df), q.view(torch.uint8)], 1)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, 32] values 0..15 -> [N, 16] bytes (weight j low, weight j + 16 high)."""
    q = q.to(torch.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _quant_q4_0(x):
    # Scale from the weight of largest magnitude, signed, so that it lands exactly on -8.
    idx = x.abs().argmax(1, keepdim=True)
    vmax = x.gather(1, idx).squeeze(1)
    d = (vmax / -8).to(torch.float16)
    _check_finite_scale("q4_0", d)
    df = d.float()
    inv = torch.where(df != 0, 1.0 / df, torch.zeros_like(df))
    q = (torch.round(x * inv.unsqueeze(1)) + 8).clamp(0, 15)
    return torch.cat([_to_f16_bytes(df), _pack_nibbles(q)], 1)


def _quant_q4_1(x):
    m = x.amin(1).to(torch.float16)
    mf = m.float()
    d = ((x.amax(1) - mf) / 15).to(torch.float16)
    _check_finite_scale("q4_1", torch.stack([m, d]))
    df = d.float()
    inv = torch.where(df > 0, 1.0 / df, torch.zeros_like(df))
    q = torch.round((x - mf.unsqueeze(1)) * inv.unsqueeze(1)).clamp(0, 15)
    return torch.cat([_to_f16_bytes(df), _to_f16_bytes(mf), _pack_nibbles(q)], 1)


_QUANT = {"q8_0": _quant_q8_0, "q4_0": _quant_q4_0, "q4_1": _quant_q4_1}


def quantize(w: torch.Tensor, qtype: str | int) -> torch.Tensor:
    """Encode float weights [rows, cols] as GGML blocks -> uint8 [rows, row_bytes].

    For f32/f16/bf16 this returns `w` cast to that dtype. Rounds to nearest; a block's scale
    is stored in fp16 and the codes are computed against the stored (rounded) scale.
    """
    t = ggml_type(qtype)
    if w.dim() != 2:
        raise ValueError(f"quantize expects a 2-D [rows, cols] tensor, got {list(w.shape)}")
    if t.name in FLOAT_DTYPES:
        return w.to(FLOAT_DTYPES[t.name]).contiguous()
    if t.name not in _QUANT:
        raise ValueError(
            f"quantize to {t.name} is not supported (q4_0, q4_1, q8_0, f32, f16, bf16)"
        )
    rows, cols = w.shape
    rb = row_bytes(t.name, cols)
    x = w.detach().float().contiguous().reshape(-1, t.block_size)
    if not torch.isfinite(x).all():
        raise ValueError(f"quantize to {t.name}: weights contain NaN or infinity")
    if x.numel() == 0:
        return torch.zeros(rows, rb, dtype=torch.uint8)
    return _QUANT[t.name](x).reshape(rows, rb)
