"""The quantized block formats are stated once in C++ and once in Python, and they agree.

csrc/common/quant_blocks.h types the blocks the kernels read as structs whose sizes are
static_asserts; pyllm/weights/quant.py's GGML table is where Python's block sizes and type codes
come from (the qlinear op and the C++ runner derive theirs from it). This reads the header's
assertions and compares them with the table, so neither side can drift alone.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from pyllm.model import fast
from pyllm.weights import quant

qlinear = importlib.import_module("pyllm.ops.qlinear")  # (pyllm.ops.qlinear is also the op)

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "common" / "quant_blocks.h"


def header_sizes() -> dict[str, int]:
    text = HEADER.read_text(encoding="utf-8")
    found = re.findall(r"static_assert\(sizeof\(Block(\w+)\)\s*==\s*(\d+)", text)
    return {name.lower(): int(size) for name, size in found}


def header_constant(name: str) -> int:
    found = re.search(rf"constexpr int {name} = (\d+);", HEADER.read_text(encoding="utf-8"))
    assert found, name
    return int(found.group(1))


def test_the_header_states_every_kernel_block_type():
    sizes = header_sizes()
    assert set(quant.KERNEL_BLOCK_BYTES) <= set(sizes)
    assert set(sizes) == {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"}
    assert header_constant("kQK") == quant.KERNEL_BLOCK


def test_header_sizes_match_the_ggml_table():
    weights_per_block = {32: header_constant("kQK"), 256: header_constant("kQK_K")}
    assert weights_per_block == {32: 32, 256: 256}
    for name, size in header_sizes().items():
        t = quant.TYPES_BY_NAME[name]
        assert t.block_bytes == size, name
        assert weights_per_block[t.block_size] == t.block_size, name


def test_python_tables_derive_from_the_ggml_table():
    assert set(quant.QTYPE_CODES) <= set(quant.OP_QTYPE_CODES)
    for name, code in quant.OP_QTYPE_CODES.items():
        assert quant.TYPES_BY_NAME[name].id == code
    assert qlinear.BLOCK_BYTES == quant.KERNEL_BLOCK_BYTES
    # The int8 path takes every block type the header states (the 32-weight kernel blocks and
    # the Q5 / K-quant blocks), each one the qlinear op has a code for, and no float type.
    assert set(qlinear.INT8_QTYPES) == set(header_sizes())
    assert set(qlinear.INT8_QTYPES) <= set(quant.OP_QTYPE_CODES)
    assert qlinear.INT8_QTYPES[: len(quant.KERNEL_BLOCK_BYTES)] == tuple(quant.KERNEL_BLOCK_BYTES)
    # The fused runner takes every type the qlinear op does (Q5 / K-quant blocks included).
    assert fast.OP_QTYPE_CODES is quant.OP_QTYPE_CODES
    assert {qlinear.QTYPE_NAMES[c] for c in quant.OP_QTYPE_CODES.values()} == set(
        quant.OP_QTYPE_CODES
    )
