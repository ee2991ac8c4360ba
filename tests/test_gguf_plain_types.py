"""Plain (one element a block) GGUF tensor types other than F32/F16/BF16 — I8/I16/I32/I64 and
F64 — are converted to f32 at load, as GGUFFile.weight's docstring says; and tokenizer metadata
that asks for a BOS token it does not name is refused when the model loads."""

from __future__ import annotations

from pathlib import Path

import gguf_builder as B
import numpy as np
import pytest
import torch

from pyllm.errors import ModelFormatError
from pyllm.tokenizer import load_tokenizer
from pyllm.weights.gguf import load_gguf

# GGML type ids of the plain element types, with their numpy dtypes.
PLAIN = {"i8": (24, "<i1"), "i16": (25, "<i2"), "i32": (26, "<i4"), "i64": (27, "<i8"),
         "f64": (28, "<f8")}


def _file(tmp_path: Path, name: str, values: np.ndarray, type_id: int) -> Path:
    rows, cols = values.shape
    built = B.build([], [B.Tensor("t.weight", (cols, rows), type_id, values.tobytes())])
    return built.write(tmp_path / name)


@pytest.mark.parametrize("qtype", sorted(PLAIN))
def test_plain_types_convert_to_f32(tmp_path: Path, qtype: str, capsys) -> None:
    type_id, dtype = PLAIN[qtype]
    rng = np.random.default_rng(1)
    values = rng.integers(-100, 100, (3, 5)).astype(dtype)
    if qtype == "i32":
        values[0, 0] = 2**24 + 1  # not a float32: rounds to the nearest one
    g = load_gguf(_file(tmp_path, f"{qtype}.gguf", values, type_id))
    w, got = g.weight("t.weight")
    assert got == "f32" and w.dtype == torch.float32 and tuple(w.shape) == (3, 5)
    assert torch.equal(w, torch.from_numpy(values.astype(np.float64)).to(torch.float32))
    assert f"converting {qtype.upper()} tensors to f32" in capsys.readouterr().err


def test_f64_beyond_float32_range_is_refused(tmp_path: Path) -> None:
    values = np.array([[1.0, 1e300]], dtype="<f8")
    g = load_gguf(_file(tmp_path, "big.gguf", values, PLAIN["f64"][0]))
    with pytest.raises(ModelFormatError, match=r"'t.weight'.*beyond float32's range"):
        g.weight("t.weight")


def _bpe_metadata(**extra) -> dict:
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": ["a", "b", "c", "ab", "abc", "<|end|>"],
        "tokenizer.ggml.token_type": np.array([1, 1, 1, 1, 1, 3]),
        "tokenizer.ggml.merges": ["a b", "ab c"],
        "tokenizer.ggml.eos_token_id": 5,
    }
    md.update(extra)
    return md


def test_add_bos_without_a_bos_id_is_refused_at_load() -> None:
    with pytest.raises(ModelFormatError, match=r"^m\.gguf: tokenizer\.ggml\.add_bos_token: "
                                               r"true, but tokenizer\.ggml\.bos_token_id"):
        load_tokenizer(_bpe_metadata(**{"tokenizer.ggml.add_bos_token": True}), origin="m.gguf")
    # with a BOS id, or without the flag, it loads and encodes
    tok = load_tokenizer(_bpe_metadata(**{"tokenizer.ggml.add_bos_token": True,
                                          "tokenizer.ggml.bos_token_id": 5}))
    assert tok.encode("abc") == [5, 4]
    assert load_tokenizer(_bpe_metadata()).encode("abc") == [4]


def test_add_bos_without_a_bos_id_is_refused_for_llama_vocabularies() -> None:
    md = {"tokenizer.ggml.model": "llama",
          "tokenizer.ggml.tokens": ["<unk>", "\u2581a", "a"],
          "tokenizer.ggml.scores": np.array([0.0, -1.0, -2.0], dtype=np.float32),
          "tokenizer.ggml.token_type": np.array([2, 1, 1]),
          "tokenizer.ggml.add_bos_token": True}
    with pytest.raises(ModelFormatError, match="add_bos_token"):
        load_tokenizer(md)
