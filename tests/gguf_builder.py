"""A tiny GGUF writer for tests: builds valid files and remembers where every field lies, so
tests can corrupt exactly one field by byte surgery (or build invalid structures directly).

Written from the GGUF layout (see pyllm/weights/gguf.py's docstring); the tests cross-check its
output with the `gguf` package's own reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, \
    FLOAT64 = range(13)
_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
        FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}


def enc_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_value(vtype: int, value: Any) -> bytes:
    """Encode a value; an ARRAY value is (element_type, list_of_values)."""
    if vtype == STRING:
        return enc_string(value)
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(enc_value(etype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: innermost first
    ggml_type: int
    data: bytes


@dataclass
class Built:
    data: bytes
    offsets: dict[str, int] = field(default_factory=dict)  # field -> byte offset in `data`

    def write(self, path: Path, data: bytes | None = None) -> Path:
        path.write_bytes(self.data if data is None else data)
        return path

    def patched(self, field_name: str, fmt: str, value: Any, delta: int = 0) -> bytes:
        """A copy with `value` packed (struct fmt) at the field's offset (+delta)."""
        b = bytearray(self.data)
        struct.pack_into(fmt, b, self.offsets[field_name] + delta, value)
        return bytes(b)


def build(kvs: list[tuple[str, int, Any]], tensors: list[Tensor], *, version: int = 3,
          alignment: int = 32, magic: bytes = b"GGUF") -> Built:
    """Serialize a GGUF file. Tensor data is laid out in order, each aligned to `alignment`
    (pass a general.alignment kv yourself when it is not 32)."""
    out = bytearray()
    off: dict[str, int] = {}

    def mark(name: str) -> None:
        off[name] = len(out)

    mark("magic")
    out += magic
    mark("version")
    out += struct.pack("<I", version)
    mark("tensor_count")
    out += struct.pack("<Q", len(tensors))
    mark("kv_count")
    out += struct.pack("<Q", len(kvs))
    for key, vtype, value in kvs:
        mark(f"kv:{key}")
        out += enc_string(key)
        mark(f"kv:{key}:type")
        out += struct.pack("<I", vtype)
        mark(f"kv:{key}:value")
        out += enc_value(vtype, value)
    rel = 0
    rels = []
    for t in tensors:
        mark(f"tensor:{t.name}")
        out += enc_string(t.name)
        mark(f"tensor:{t.name}:n_dims")
        out += struct.pack("<I", len(t.dims))
        mark(f"tensor:{t.name}:dims")
        out += b"".join(struct.pack("<Q", d) for d in t.dims)
        mark(f"tensor:{t.name}:type")
        out += struct.pack("<I", t.ggml_type)
        mark(f"tensor:{t.name}:offset")
        out += struct.pack("<Q", rel)
        rels.append(rel)
        rel = -(-(rel + len(t.data)) // alignment) * alignment
    mark("header_end")
    out += b"\0" * (-len(out) % alignment)
    mark("data")
    for t, r in zip(tensors, rels):
        out += b"\0" * (off["data"] + r - len(out))
        mark(f"data:{t.name}")
        out += t.data
    return Built(bytes(out), off)


# ------------------------------------------------------------------ the tiny model file

def _blocks(rng: np.random.Generator, n_blocks: int, block_bytes: int,
            scale_offsets: list[int]) -> bytes:
    """Random quant blocks with finite fp16 scales at the given offsets."""
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for o in scale_offsets:
        raw[:, o:o + 2] = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16) \
            .view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def tiny_kvs() -> list[tuple[str, int, Any]]:
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "tiny test model"),
        ("llama.block_count", UINT32, 1),
        ("llama.context_length", UINT32, 64),
        ("llama.rope.freq_base", FLOAT32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5),
        ("tokenizer.ggml.add_bos_token", BOOL, 0),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "a", "b", "ab", "é"])),
        ("tokenizer.ggml.token_type", ARRAY, (INT32, [3, 1, 1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", UINT32, 0),
        ("general.tags", ARRAY, (ARRAY, [(UINT8, [1, 2]), (UINT8, [3])])),
        ("general.alignment", UINT32, 32),
    ]


def tiny_tensors(seed: int = 0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal(8).astype(np.float32).tobytes()
    f16 = rng.standard_normal(2 * 16).astype(np.float16).tobytes()
    bf16 = (rng.standard_normal(3 * 4).astype(np.float32).view(np.uint32) >> 16) \
        .astype(np.uint16).tobytes()
    return [
        Tensor("norm.weight", (8,), 0, f32),
        Tensor("f16.weight", (16, 2), 1, f16),
        Tensor("bf16.weight", (4, 3), 30, bf16),
        Tensor("q8_0.weight", (64, 2), 8, _blocks(rng, 4, 34, [0])),
        Tensor("q4_0.weight", (32, 3), 2, _blocks(rng, 3, 18, [0])),
        Tensor("q4_1.weight", (64, 2), 3, _blocks(rng, 4, 20, [0, 2])),
        Tensor("q4_k.weight", (256, 2), 12, _blocks(rng, 2, 144, [0, 2])),
        Tensor("q6_k.weight", (256, 1), 14, _blocks(rng, 1, 210, [208])),
    ]


def tiny_gguf(seed: int = 0) -> Built:
    return build(tiny_kvs(), tiny_tensors(seed))
