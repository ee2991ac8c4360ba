"""The GGUF reader: valid files (cross-checked with the `gguf` package's reader and writer),
every kind of damaged field, hyper-parameter helpers, and the real default model."""

from __future__ import annotations

import collections
import struct

import numpy as np
import pytest
import torch

import pyllm
from pyllm.weights import quant
from pyllm.weights.gguf import ModelFormatError, load_gguf
import gguf_builder as B

gguf = pytest.importorskip("gguf")


@pytest.fixture
def tiny():
    return B.tiny_gguf()


@pytest.fixture
def tiny_path(tmp_path, tiny):
    return tiny.write(tmp_path / "tiny.gguf")


def load_bytes(tmp_path, data: bytes):
    p = tmp_path / "x.gguf"
    p.unlink(missing_ok=True)
    p.write_bytes(data)
    return load_gguf(p)


def expect_error(tmp_path, data: bytes, match: str):
    with pytest.raises(ModelFormatError, match=match) as ei:
        load_bytes(tmp_path, data)
    assert "x.gguf" in str(ei.value)  # the message names the file
    return ei.value


# ------------------------------------------------------------------ valid files


def test_error_is_public_value_error():
    assert ModelFormatError is pyllm.ModelFormatError
    assert issubclass(ModelFormatError, ValueError)


def test_tiny_file_metadata_and_tensors(tiny_path):
    g = load_gguf(tiny_path)
    assert g.version == 3
    assert g.metadata["general.architecture"] == "llama"
    assert g.metadata["llama.context_length"] == 64
    assert g.metadata["llama.rope.freq_base"] == 10000.0
    assert g.metadata["tokenizer.ggml.add_bos_token"] is False
    assert g.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ab", "é"]
    tt = g.metadata["tokenizer.ggml.token_type"]
    assert isinstance(tt, np.ndarray) and tt.tolist() == [3, 1, 1, 1, 1]
    nested = g.metadata["general.tags"]
    assert [a.tolist() for a in nested] == [[1, 2], [3]]
    assert list(g.tensors) == [t.name for t in B.tiny_tensors()]
    info = g.tensors["q4_1.weight"]
    assert info.shape == (2, 64) and info.type_name == "q4_1" and info.nbytes == 80


def test_tiny_file_agrees_with_gguf_package_reader(tmp_path):
    # the gguf package's reader is an independent parser; it cannot take nested arrays, so
    # this variant leaves them out
    kvs = [kv for kv in B.tiny_kvs() if kv[0] != "general.tags"]
    built = B.build(kvs, B.tiny_tensors())
    path = built.write(tmp_path / "t.gguf")
    g = load_gguf(path)
    r = gguf.GGUFReader(path)
    assert len(r.tensors) == len(g.tensors)
    for rt in r.tensors:
        mine = g.tensors[rt.name]
        assert mine.offset == rt.data_offset
        assert mine.nbytes == rt.n_bytes
        assert mine.ggml_type == rt.tensor_type.value
        assert list(reversed(mine.shape)) == [int(d) for d in rt.shape]
        np.testing.assert_array_equal(
            g.raw(rt.name).reshape(-1).view(torch.uint8).numpy(),
            np.asarray(rt.data).reshape(-1).view(np.uint8),
        )
    assert {k for k in r.fields if not k.startswith("GGUF.")} == set(g.metadata)
    assert r.fields["tokenizer.ggml.tokens"].contents() == g.metadata["tokenizer.ggml.tokens"]
    assert r.fields["llama.block_count"].contents() == g.metadata["llama.block_count"]


def test_file_from_gguf_package_writer_loads(tmp_path):
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.context_length", 128)
    w.add_float32("llama.rope.freq_base", 500000.0)
    w.add_string("general.name", "writer test")
    w.add_array("tokenizer.ggml.tokens", ["x", "y", "zz"])
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    h = (np.arange(64, dtype=np.float16) / 7).reshape(2, 32)
    w.add_tensor("a.weight", a)
    w.add_tensor("h.weight", h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = load_gguf(path)
    assert g.metadata["llama.context_length"] == 128
    assert g.metadata["general.architecture"] == "llama"
    assert g.metadata["tokenizer.ggml.tokens"] == ["x", "y", "zz"]
    assert g.tensors["a.weight"].shape == (3, 4)
    np.testing.assert_array_equal(g.raw("a.weight").numpy(), a)
    np.testing.assert_array_equal(g.raw("h.weight").numpy(), h)
    t, qtype = g.weight("h.weight")
    assert qtype == "f16" and t.dtype == torch.float16


def test_raw_is_zero_copy_view_of_the_file(tiny_path, tiny):
    g = load_gguf(tiny_path)
    a, b = g.tensors["q8_0.weight"], g.tensors["q4_1.weight"]
    ra, rb = g.raw(a.name), g.raw(b.name)
    # both are views into one mapping of the file: their addresses differ by the file offsets
    assert rb.data_ptr() - ra.data_ptr() == b.offset - a.offset
    assert g.raw(a.name).data_ptr() == ra.data_ptr()
    assert bytes(ra.reshape(-1).numpy()) == tiny.data[a.offset : a.offset + a.nbytes]
    assert ra.shape == (2, quant.row_bytes("q8_0", 64)) and ra.dtype == torch.uint8
    n = g.raw("norm.weight")
    assert n.dtype == torch.float32 and n.shape == (8,)
    assert g.raw("bf16.weight").dtype == torch.bfloat16
    # the file on disk is never written through the view (private mapping)
    ra.zero_()
    assert tiny_path.read_bytes() == tiny.data


@pytest.mark.parametrize(
    "name,qtype",
    [
        ("norm.weight", "f32"),
        ("f16.weight", "f16"),
        ("bf16.weight", "bf16"),
        ("q8_0.weight", "q8_0"),
        ("q4_0.weight", "q4_0"),
        ("q4_1.weight", "q4_1"),
    ],
)
def test_weight_keeps_kernel_types_as_stored(tiny_path, name, qtype):
    g = load_gguf(tiny_path)
    t, q = g.weight(name)
    assert q == qtype
    assert t.data_ptr() == g.raw(name).data_ptr()


def test_weight_keeps_k_quants_and_q5_as_stored(tiny_path, capsys, monkeypatch):
    monkeypatch.delenv("PYLLM_NATIVE_KQUANTS", raising=False)
    g = load_gguf(tiny_path)
    for name, qtype in [("q4_k.weight", "q4_k"), ("q6_k.weight", "q6_k")]:
        t, q = g.weight(name)
        assert q == qtype
        assert t.data_ptr() == g.raw(name).data_ptr()  # the mapped bytes, never expanded
    assert capsys.readouterr().err == ""


def test_weight_converts_k_quants_to_q8_0_when_asked(tiny_path, capsys, monkeypatch):
    """PYLLM_NATIVE_KQUANTS=0: the Q8_0 conversion (twice the memory), with its notice."""
    monkeypatch.setenv("PYLLM_NATIVE_KQUANTS", "0")
    g = load_gguf(tiny_path)
    t, q = g.weight("q4_k.weight")
    assert q == "q8_0" and t.data_ptr() != g.raw("q4_k.weight").data_ptr()
    err = capsys.readouterr().err
    assert "converting" in err and "Q4_K" in err.split("converting")[1].split("tensors")[0]


def _low_k_quant_file(tmp_path):
    rng = np.random.default_rng(5)
    return load_bytes(
        tmp_path,
        B.build(
            [],
            [
                B.Tensor("q2_k.weight", (256, 2), 10, B._blocks(rng, 2, 84, [80, 82])),
                B.Tensor("q3_k.weight", (256, 1), 11, B._blocks(rng, 1, 110, [108])),
            ],
        ).data,
    )


def test_weight_converts_q2_k_and_q3_k_with_one_notice(tmp_path, capsys):
    g = _low_k_quant_file(tmp_path)
    for name, src in [("q2_k.weight", "q2_k"), ("q3_k.weight", "q3_k")]:
        t, q = g.weight(name)
        assert q == "q8_0"
        exact = quant.dequantize(g.raw(name), src, 256)
        got = quant.dequantize(t, "q8_0", 256)
        # q8_0's error: half a step of the block's absolute max / 127, plus fp16 scale rounding
        step = exact.abs().reshape(-1, 32).amax(1, keepdim=True) / 127
        assert ((got - exact).abs().reshape(-1, 32) <= 0.51 * step + 1e-7).all()
        t16, q16 = g.weight(name, convert_to="f16")
        assert q16 == "f16" and t16.shape == (g.tensors[name].shape)
        torch.testing.assert_close(t16.float(), exact.reshape(t16.shape), rtol=1e-3, atol=1e-6)
    err = capsys.readouterr().err
    assert err.count("pyllm:") == 1 and "Q2_K" in err and "Q3_K" in err


def test_missing_tensor_is_named(tiny_path):
    g = load_gguf(tiny_path)
    with pytest.raises(ModelFormatError, match="'nope'"):
        g.raw("nope")
    with pytest.raises(ModelFormatError, match="a.b.*c.d"):
        g.require_tensors(["norm.weight", "a.b", "c.d"])


# ------------------------------------------------------------------ hyper-parameter helpers


def test_get_helpers(tiny_path):
    g = load_gguf(tiny_path)
    assert g.get("llama.block_count", int) == 1
    assert g.get("llama.block_count", float) == 1.0  # integers are numbers
    assert g.get("general.name", str) == "tiny test model"
    assert g.get("absent.key", int, required=False, default=7) == 7
    assert g.get_int("llama.context_length", 1, 1 << 20) == 64
    assert g.get_float("llama.attention.layer_norm_rms_epsilon", 0, 1) == pytest.approx(1e-5)
    assert g.get_array("tokenizer.ggml.tokens", 5, numeric=False)[1] == "a"
    assert g.get_token_id("tokenizer.ggml.bos_token_id", 5) == 0
    with pytest.raises(ModelFormatError, match="llama.head_count: required key is missing"):
        g.get("llama.head_count", int)
    with pytest.raises(ModelFormatError, match="llama.rope.freq_base: expected an integer"):
        g.get_int("llama.rope.freq_base")
    with pytest.raises(ModelFormatError, match="general.name: expected a number"):
        g.get_float("general.name")
    with pytest.raises(ModelFormatError, match=r"llama.context_length: 64 is outside \[128"):
        g.get_int("llama.context_length", 128)
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.tokens: expected 6 entries"):
        g.get_array("tokenizer.ggml.tokens", 6)
    with pytest.raises(ModelFormatError, match="token_type: expected an array of strings"):
        g.get_array("tokenizer.ggml.token_type", numeric=False)
    with pytest.raises(ModelFormatError, match="bos_token_id: 0 is outside"):
        g.get_token_id("tokenizer.ggml.bos_token_id", 0)


def test_get_float_rejects_non_finite(tmp_path):
    built = B.build([("llama.rope.freq_base", B.FLOAT32, float("nan"))], [])
    g = load_bytes(tmp_path, built.data)
    with pytest.raises(ModelFormatError, match="freq_base: nan is not a finite"):
        g.get_float("llama.rope.freq_base")


# ------------------------------------------------------------------ damaged headers

U64_NEG1 = (1 << 64) - 1


def test_empty_and_tiny_files(tmp_path):
    expect_error(tmp_path, b"", "empty")
    expect_error(tmp_path, b"GG", "magic")
    expect_error(tmp_path, b"GGUF\x03\x00", "version.*truncated")


def test_bad_magic(tmp_path, tiny):
    expect_error(tmp_path, b"GGML" + tiny.data[4:], "magic")


@pytest.mark.parametrize(
    "version,match",
    [(1, "version 1"), (4, "version 4"), (0x03000000, "big-endian"), (U64_NEG1 >> 32, "version")],
)
def test_bad_version(tmp_path, tiny, version, match):
    expect_error(tmp_path, tiny.patched("version", "<I", version), match)


@pytest.mark.parametrize("field", ["tensor_count", "kv_count"])
@pytest.mark.parametrize(
    "value,match",
    [
        (U64_NEG1, "negative"),
        (1 << 63, "negative"),
        ((1 << 63) - 1, "needs at least"),
        (10**6, "needs at least"),
    ],
)
def test_huge_counts(tmp_path, tiny, field, value, match):
    expect_error(tmp_path, tiny.patched(field, "<Q", value), f"{field}: count .*{match}")


def test_count_larger_than_present(tmp_path, tiny):
    # one more kv than the file holds: the reader runs into the tensor infos and fails cleanly
    data = tiny.patched("kv_count", "<Q", len(B.tiny_kvs()) + 1)
    with pytest.raises(ModelFormatError):
        load_bytes(tmp_path, data)
    data = tiny.patched("tensor_count", "<Q", len(B.tiny_tensors()) + 1)
    with pytest.raises(ModelFormatError):
        load_bytes(tmp_path, data)


@pytest.mark.parametrize("length", [U64_NEG1, 1 << 63, 10**9, 100_000])
def test_key_length_past_end(tmp_path, tiny, length):
    expect_error(tmp_path, tiny.patched("kv:general.name", "<Q", length), r"kv\[1\]\.key")


def test_string_value_length_past_end(tmp_path, tiny):
    data = tiny.patched("kv:general.name:value", "<Q", len(tiny.data))
    expect_error(tmp_path, data, r"general.name \(string bytes\).*truncated")


def test_invalid_utf8(tmp_path):
    built = B.build([("general.name", B.STRING, b"\xff\xfe")], [])
    expect_error(tmp_path, built.data, "general.name: string is not valid UTF-8")


@pytest.mark.parametrize("value_type", [13, 255, U64_NEG1 >> 32])
def test_unknown_value_type(tmp_path, tiny, value_type):
    expect_error(
        tmp_path,
        tiny.patched("kv:general.name:type", "<I", value_type),
        "general.name: unknown value type",
    )


def test_bad_bool(tmp_path):
    expect_error(tmp_path, B.build([("x.flag", B.BOOL, 2)], []).data, "x.flag: bool value")
    arr = B.build([("x.flags", B.ARRAY, (B.BOOL, [0, 1, 7]))], [])
    expect_error(tmp_path, arr.data, "x.flags: bool array")


@pytest.mark.parametrize("length", [U64_NEG1, 1 << 63, 1 << 62, 10**8])
@pytest.mark.parametrize(
    "key", ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "general.tags"]
)
def test_array_length_huge(tmp_path, tiny, key, length):
    # the u64 length sits after the u32 element type
    data = tiny.patched(f"kv:{key}:value", "<Q", length, delta=4)
    expect_error(tmp_path, data, rf"{key} \(array length\)")


def test_array_string_element_length_past_end(tmp_path, tiny):
    # first string of the token array: after the u32 element type and u64 count
    data = tiny.patched("kv:tokenizer.ggml.tokens:value", "<Q", U64_NEG1, delta=12)
    expect_error(tmp_path, data, r"tokenizer.ggml.tokens\[0\] \(string bytes\)")


def test_unknown_array_element_type(tmp_path, tiny):
    data = tiny.patched("kv:tokenizer.ggml.token_type:value", "<I", 77)
    expect_error(tmp_path, data, "unknown array element type 77")


def _nested(depth: int):
    value = (B.UINT8, [1])
    for _ in range(depth - 1):
        value = (B.ARRAY, [value])
    return value


def test_nested_arrays_depth_bounded(tmp_path):
    ok = load_bytes(tmp_path, B.build([("x.n", B.ARRAY, _nested(3))], []).data)
    assert ok.metadata["x.n"][0][0].tolist() == [1]
    expect_error(tmp_path, B.build([("x.n", B.ARRAY, _nested(4))], []).data, "nested deeper")
    # a deeply self-nested array header (as a fuzzer would make) fails fast
    bomb = struct.pack("<IQ", B.ARRAY, 1) * 10_000
    data = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + B.enc_string("x.n")
        + struct.pack("<I", B.ARRAY)
        + bomb
    )
    expect_error(tmp_path, data, "nested deeper")


def test_nested_array_huge_inner_count(tmp_path):
    built = B.build([("x.n", B.ARRAY, (B.ARRAY, [(B.UINT8, [1, 2])]))], [])
    # outer: u32 type, u64 count; inner: u32 type, u64 count
    data = built.patched("kv:x.n:value", "<Q", 1 << 40, delta=4 + 8 + 4)
    expect_error(tmp_path, data, r"x.n\[0\] \(array length\)")


def test_duplicate_key(tmp_path):
    kvs = [("a.b", B.UINT32, 1), ("a.b", B.UINT32, 2)]
    expect_error(tmp_path, B.build(kvs, []).data, "a.b: duplicate key")


def test_empty_key(tmp_path):
    expect_error(tmp_path, B.build([("", B.UINT32, 1)], []).data, "empty key")


# ------------------------------------------------------------------ alignment


@pytest.mark.parametrize("alignment", [0, 3, 12, 4, 1 << 30])
def test_bad_alignment(tmp_path, tiny, alignment):
    expect_error(
        tmp_path, tiny.patched("kv:general.alignment:value", "<I", alignment), "general.alignment"
    )


def test_alignment_wrong_type(tmp_path):
    built = B.build([("general.alignment", B.FLOAT32, 32.0)], [])
    expect_error(tmp_path, built.data, "general.alignment: expected an unsigned integer")


def test_other_valid_alignment(tmp_path):
    kvs = [kv for kv in B.tiny_kvs() if kv[0] != "general.alignment"]
    built = B.build(kvs + [("general.alignment", B.UINT32, 64)], B.tiny_tensors(), alignment=64)
    g = load_bytes(tmp_path, built.data)
    assert g.alignment == 64 and g.data_offset % 64 == 0
    for t in g.tensors.values():
        assert (t.offset - g.data_offset) % 64 == 0
    # data laid out on 64-byte boundaries but declared as 128-aligned: misaligned offsets
    bad = built.patched("kv:general.alignment:value", "<I", 128)
    expect_error(tmp_path, bad, "offset: .*not a multiple of the alignment 128")


# ------------------------------------------------------------------ tensor infos


def test_n_dims(tmp_path, tiny):
    for n in (0, 5, 1000, U64_NEG1 >> 32):
        expect_error(
            tmp_path,
            tiny.patched("tensor:q4_1.weight:n_dims", "<I", n),
            r"tensor 'q4_1.weight' n_dims: \d+ is outside 1..4",
        )


@pytest.mark.parametrize(
    "dim,match",
    [
        (0, "dimension 0"),
        (U64_NEG1, "dimension"),
        (1 << 63, "dimension"),
        (1 << 40, "exceed|outside"),
    ],
)
def test_bad_dims(tmp_path, tiny, dim, match):
    data = tiny.patched("tensor:q4_1.weight:dims", "<Q", dim, delta=8)
    expect_error(tmp_path, data, rf"tensor 'q4_1.weight' .*({match})")


def test_dims_product_overflow(tmp_path):
    t = B.Tensor("big", (1 << 32, 1 << 32), 0, b"")
    expect_error(tmp_path, B.build([], [t]).data, "tensor 'big' dims: element count .*overflows")
    t = B.Tensor("big", (1 << 20,) * 4, 0, b"")
    expect_error(tmp_path, B.build([], [t]).data, "overflows")


def test_row_not_whole_blocks(tmp_path, tiny):
    data = tiny.patched("tensor:q4_1.weight:dims", "<Q", 48)
    expect_error(tmp_path, data, "tensor 'q4_1.weight' dims.0.: row length 48")


@pytest.mark.parametrize("gtype", [4, 5, 31, 99, U64_NEG1 >> 32])
def test_unknown_tensor_type(tmp_path, tiny, gtype):
    expect_error(
        tmp_path,
        tiny.patched("tensor:q4_1.weight:type", "<I", gtype),
        f"tensor 'q4_1.weight' type: unknown GGML type id {gtype}",
    )


@pytest.mark.parametrize("offset", [U64_NEG1 - 31, 1 << 63, 1 << 40, 4096])
def test_offset_past_end(tmp_path, tiny, offset):
    data = tiny.patched("tensor:q6_k.weight:offset", "<Q", offset)
    expect_error(tmp_path, data, "tensor 'q6_k.weight' offset")


def test_last_tensor_runs_past_end(tmp_path, tiny):
    expect_error(tmp_path, tiny.data[:-1], "tensor 'q6_k.weight' offset: .*outside the data")


def test_misaligned_offset(tmp_path, tiny):
    g = load_bytes(tmp_path, tiny.data)
    rel = g.tensors["q4_1.weight"].offset - g.data_offset
    data = tiny.patched("tensor:q4_1.weight:offset", "<Q", rel + 2)
    expect_error(tmp_path, data, "tensor 'q4_1.weight' offset: .*not a multiple of the alignment")


def test_overlapping_tensors(tmp_path, tiny):
    data = tiny.patched("tensor:q4_1.weight:offset", "<Q", 0)
    expect_error(tmp_path, data, "overlaps")


def test_duplicate_tensor_name(tmp_path):
    t = B.Tensor("w", (8,), 0, bytes(32))
    expect_error(tmp_path, B.build([], [t, t]).data, "tensor 'w': duplicate tensor name")


def test_header_padding_past_end(tmp_path):
    built = B.build([], [B.Tensor("w", (8,), 0, bytes(32))])
    expect_error(tmp_path, built.data[: built.offsets["header_end"] + 1], "data section|offset")


def test_damaged_k_quant_scale_is_a_format_error(tmp_path):
    rng = np.random.default_rng(6)
    blocks = bytearray(B._blocks(rng, 1, 84, [80, 82]))
    blocks[80:82] = b"\x00\x7c"  # +inf scale: the header is fine, the conversion is not
    g = load_bytes(
        tmp_path, B.build([], [B.Tensor("q2_k.weight", (256, 1), 10, bytes(blocks))]).data
    )
    with pytest.raises(ModelFormatError, match="tensor 'q2_k.weight': cannot convert q2_k"):
        g.weight("q2_k.weight")


def test_k_quant_row_not_whole_super_blocks_is_a_format_error(tmp_path):
    for qtype, ggml_id, nbytes in [("q4_k", 12, 144), ("q5_k", 13, 176), ("q6_k", 14, 210)]:
        t = B.Tensor("w", (128, 2), ggml_id, bytes(nbytes))
        expect_error(
            tmp_path,
            B.build([], [t]).data,
            f"row length 128 is not a multiple of the {qtype} block size 256",
        )


# ------------------------------------------------------------------ the default model


def test_default_model_facts(smollm2_path):
    g = load_gguf(smollm2_path)
    assert g.version == 3
    assert len(g.tensors) == 272
    assert len(g.metadata) == 33
    counts = collections.Counter(t.type_name for t in g.tensors.values())
    assert counts == {"q4_1": 210, "q8_0": 1, "f32": 61}
    emb = g.tensors["token_embd.weight"]
    assert emb.shape == (49152, 576) and emb.nbytes == 30_081_024
    assert sum(t.nbytes for t in g.tensors.values()) == 96_576_768
    assert g.get("general.architecture", str) == "llama"
    assert g.get_int("llama.block_count") == 30
    assert g.get_int("llama.embedding_length") == 576
    assert g.get_int("llama.attention.head_count_kv") == 3
    assert g.get_float("llama.rope.freq_base") == 100000.0
    assert len(g.get_array("tokenizer.ggml.merges", numeric=False)) == 48_900
    assert g.get_array("tokenizer.ggml.tokens", 49_152)[1] == "<|im_start|>"
    w, q = g.weight("blk.0.ffn_down.weight")
    assert q == "q4_1" and w.shape == (576, 1536 // 32 * 20)
    # the tensors tile the data section: each starts at the previous end, aligned
    spans = sorted((t.offset, t.nbytes) for t in g.tensors.values())
    assert spans[0][0] == g.data_offset
    for (off, n), (nxt, _) in zip(spans, spans[1:]):
        assert nxt == off + n + (-(off + n - g.data_offset) % g.alignment)


def mapping_rss_kib(g) -> int:
    """Resident KiB of the GGUFFile `g`'s own mapping of its file (from /proc/self/smaps; other
    mappings of the same file, e.g. other tests' models, are not counted)."""
    start = torch.frombuffer(g._mm, dtype=torch.uint8, count=1).data_ptr()
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            inside = int(head[0].split("-")[0], 16) == start
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


def test_release_drops_resident_pages_and_keeps_the_data(smollm2_path):
    g = load_gguf(smollm2_path)
    t = g.raw("token_embd.weight")  # 30 MB of Q8_0 blocks
    checksum = int(t.sum(dtype=torch.int64))  # touch every page
    before = mapping_rss_kib(g)
    dropped = g.release(t)
    after = mapping_rss_kib(g)
    assert dropped >= t.numel() - 2 * 4096 and dropped % 4096 == 0
    assert before - after >= 0.9 * dropped / 1024
    assert int(t.sum(dtype=torch.int64)) == checksum  # read back from the file
    assert g.release(torch.zeros(1 << 16)) == 0  # not a view of the file: nothing to do
    assert g.release(t.view(-1)[:3000]) == 0  # no whole page inside
