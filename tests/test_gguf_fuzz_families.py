"""Damaged GGUF files with the block types added after Q4_0/Q4_1/Q8_0 and the metadata of the
qwen3, gemma3 and phi3 families.

Q5_0, Q5_1, Q4_K, Q5_K and Q6_K stay in their blocks by default and are converted with
PYLLM_NATIVE_KQUANTS=0; Q2_K, Q3_K and IQ4_XS are always converted. Every case runs both ways where
that matters, and must either load (every tensor then reads, converts and, for whole models, a
few tokens generate) or raise ModelFormatError: never another exception, a hang or a read past
the end of the file. The helpers (a hard timer, the mutator, the memory-capped child process)
are tests/test_gguf_fuzz.py's.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import gguf_builder as B
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gguf_fuzz import (
    INTERESTING_U32,
    INTERESTING_U64,
    load_or_reject,
    mutate,
    run_bounded,
    time_guard,
)

from pyllm.errors import ModelFormatError
from pyllm.weights import quant
from pyllm.weights.gguf import NATIVE_KQUANTS_ENV, load_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_random_llama import ByteTokenizer

# Where the fp16 scales sit in a block of each type (byte offsets). Random bytes anywhere else
# are valid quants; a random scale may be inf or NaN, which conversion refuses on its own (see
# tests/test_gguf_reader.py), so the valid files get finite ones.
SCALES = {
    "q5_0": [0],
    "q5_1": [0, 2],
    "q4_k": [0, 2],
    "q5_k": [0, 2],
    "q6_k": [208],
    "q2_k": [80, 82],
    "q3_k": [108],
    "iq4_xs": [0],
}
NATIVE_OPT_IN = ("q5_0", "q5_1", "q4_k", "q5_k", "q6_k")  # converted with PYLLM_NATIVE_KQUANTS=0
NEW_TYPES = (*NATIVE_OPT_IN, "q2_k", "q3_k", "iq4_xs")
FAMILIES = ("qwen3", "gemma3", "phi3")
F32 = quant.TYPES_BY_NAME["f32"].id


@contextlib.contextmanager
def native(on: bool) -> Iterator[None]:
    """Unset (keep the blocks) or PYLLM_NATIVE_KQUANTS=0 (convert them)."""
    env = {k: v for k, v in os.environ.items() if k != NATIVE_KQUANTS_ENV}
    if not on:
        env[NATIVE_KQUANTS_ENV] = "0"
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def blocks_tensor(
    rng: np.random.Generator, name: str, qtype: str, dims: tuple[int, ...]
) -> B.Tensor:
    """A tensor of random `qtype` blocks with finite scales; dims in GGUF order."""
    t = quant.TYPES_BY_NAME[qtype]
    n_blocks = int(np.prod(dims)) // t.block_size
    return B.Tensor(name, dims, t.id, B._blocks(rng, n_blocks, t.block_bytes, SCALES[qtype]))


def f32_tensor(rng: np.random.Generator, name: str, n: int) -> B.Tensor:
    values = (rng.random(n) * 0.5 + 0.75).astype(np.float32)
    return B.Tensor(name, (n,), F32, values.tobytes())


# ---------------------------------------------------------------------- whole tiny models

# Every matrix has rows of 256 weights (one K-quant super-block); head_dim 64, 2 layers.
C, N_HEAD, N_KV, HEAD_DIM, N_FF, VOCAB, LAYERS, CONTEXT = 256, 4, 2, 64, 256, 256, 2, 64


def family_kvs(arch: str) -> list[tuple[str, int, Any]]:
    """A family's metadata as llama.cpp writes it (the keys pyllm reads for that family)."""
    a = arch
    kvs: list[tuple[str, int, Any]] = [
        ("general.architecture", B.STRING, a),
        (f"{a}.block_count", B.UINT32, LAYERS),
        (f"{a}.context_length", B.UINT32, CONTEXT),
        (f"{a}.embedding_length", B.UINT32, C),
        (f"{a}.feed_forward_length", B.UINT32, N_FF),
        (f"{a}.attention.head_count", B.UINT32, N_HEAD),
        (f"{a}.attention.head_count_kv", B.UINT32, N_KV),
        (f"{a}.attention.key_length", B.UINT32, HEAD_DIM),
        (f"{a}.attention.value_length", B.UINT32, HEAD_DIM),
        (f"{a}.rope.freq_base", B.FLOAT32, 10000.0),
        (f"{a}.attention.layer_norm_rms_epsilon", B.FLOAT32, 1e-6),
        (f"{a}.vocab_size", B.UINT32, VOCAB),
    ]
    if a == "gemma3":
        kvs += [
            (f"{a}.attention.sliding_window", B.UINT32, 8),
            (f"{a}.attention.sliding_window_pattern", B.UINT32, 2),
        ]
    if a == "phi3":  # LongRoPE over half of each head; the long factors apply (64 > 16)
        kvs += [
            (f"{a}.rope.dimension_count", B.UINT32, HEAD_DIM // 2),
            (f"{a}.attention.sliding_window", B.UINT32, 48),
            (f"{a}.rope.scaling.original_context_length", B.UINT32, 16),
            (f"{a}.rope.scaling.attn_factor", B.FLOAT32, 1.2),
        ]
    return kvs


def family_tensors(arch: str, seed: int = 0) -> list[B.Tensor]:
    """Random weights laid out as llama.cpp names them, the matrices cycling through
    NEW_TYPES (so each type is a QKV part, an output, an MLP matrix or the embedding)."""
    rng = np.random.default_rng(seed)
    types = iter(NEW_TYPES * 8)
    Q, KV = N_HEAD * HEAD_DIM, N_KV * HEAD_DIM

    def matrix(name: str, rows: int, cols: int) -> B.Tensor:
        return blocks_tensor(rng, name, next(types), (cols, rows))

    ts = [matrix("token_embd.weight", VOCAB, C), f32_tensor(rng, "output_norm.weight", C)]
    for i in range(LAYERS):
        p = f"blk.{i}."
        ts += [
            f32_tensor(rng, p + "attn_norm.weight", C),
            f32_tensor(rng, p + "ffn_norm.weight", C),
        ]
        if arch == "phi3":  # fused QKV and [gate; up]
            ts += [
                matrix(p + "attn_qkv.weight", Q + 2 * KV, C),
                matrix(p + "ffn_up.weight", 2 * N_FF, C),
            ]
        else:
            ts += [
                matrix(p + "attn_q.weight", Q, C),
                matrix(p + "attn_k.weight", KV, C),
                matrix(p + "attn_v.weight", KV, C),
                matrix(p + "ffn_gate.weight", N_FF, C),
                matrix(p + "ffn_up.weight", N_FF, C),
                f32_tensor(rng, p + "attn_q_norm.weight", HEAD_DIM),
                f32_tensor(rng, p + "attn_k_norm.weight", HEAD_DIM),
            ]
        ts += [matrix(p + "attn_output.weight", C, Q), matrix(p + "ffn_down.weight", C, N_FF)]
        if arch == "gemma3":
            ts += [
                f32_tensor(rng, p + "post_attention_norm.weight", C),
                f32_tensor(rng, p + "post_ffw_norm.weight", C),
            ]
    if arch == "phi3":
        half = HEAD_DIM // 4  # rotary_dim / 2
        ts += [f32_tensor(rng, f"rope_factors_{k}.weight", half) for k in ("long", "short")]
    return ts


def family_gguf(
    arch: str,
    overrides: dict[str, tuple[int, Any] | None] | None = None,
    tensors: dict[str, B.Tensor | None] | None = None,
) -> B.Built:
    """The family's tiny model; `overrides` replaces (or with None drops) metadata values by
    key, `tensors` replaces (or drops) tensors by name."""
    overrides, tensors = overrides or {}, tensors or {}
    kvs = [kv for kv in family_kvs(arch) if kv[0] not in overrides]
    kvs += [(k, *v) for k, v in overrides.items() if v is not None]
    ts = [tensors.get(t.name, t) for t in family_tensors(arch) if tensors.get(t.name, t)]
    ts += [t for name, t in tensors.items() if t is not None and name not in {x.name for x in ts}]
    return B.build(kvs, ts)


def load_and_generate(path: Path) -> list[int]:
    """Load the file as a model and greedily generate a few tokens (raises what loading or the
    first steps raise)."""
    from pyllm.generation import generate_stream
    from pyllm.model.loader import load_model
    from pyllm.sampling_params import SamplingParams

    loaded = load_model(path)
    with warnings_quiet():
        for ev in generate_stream(
            loaded.model,
            ByteTokenizer(),
            [[1, 2, 3, 4, 5]],
            [SamplingParams(max_tokens=3, temperature=0.0)],
        ):
            if ev.finished:
                return list(ev.completion.token_ids)
    raise AssertionError("generation never finished")


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """The fused-runner fallback warns (QK-norm families run op by op); not what is tested."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write(path: Path, data: bytes) -> Path:
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("keep_native", [False, True])
def test_family_models_with_new_block_types_load_and_generate(tmp_path, arch, keep_native):
    """The files the fuzzers below damage are valid to begin with."""
    path = write(tmp_path / f"{arch}.gguf", family_gguf(arch).data)
    g = load_gguf(path)
    assert {t.type_name for t in g.tensors.values()} >= set(NEW_TYPES)
    with native(keep_native):
        tokens = load_and_generate(path)
    assert len(tokens) == 3 and all(0 <= t < VOCAB for t in tokens)


# Out-of-range and wrongly typed values of the keys each family reads: each is refused at load
# with a ModelFormatError whose message names the key (or the tensor) at fault.
U32, I32, U64, F32V, STR, ARR = B.UINT32, B.INT32, B.UINT64, B.FLOAT32, B.STRING, B.ARRAY
BAD_METADATA = [
    *(
        (a, key, value)
        for a in FAMILIES
        for key, value in [
            ("attention.sliding_window", (I32, -1)),
            ("attention.sliding_window", (U64, 2**63)),
            ("attention.sliding_window", (U64, 2**64 - 1)),
            ("attention.sliding_window", (U64, 2**40)),
            ("attention.sliding_window", (F32V, 8.0)),
            ("attention.sliding_window", (STR, "8")),
            ("attention.sliding_window", (ARR, (U32, []))),
            ("rope.freq_base", (F32V, float("nan"))),
            ("rope.freq_base", (F32V, float("inf"))),
            ("rope.freq_base", (F32V, -1.0)),
            ("rope.freq_base", (F32V, 0.0)),
            ("rope.freq_base", (STR, "1e4")),
            ("attention.key_length", (U32, 0)),
            ("attention.key_length", (U32, 2**32 - 1)),
            ("attention.key_length", (I32, -64)),
            ("attention.key_length", (F32V, 64.0)),
            ("attention.value_length", (U32, 32)),
            ("rope.dimension_count", (U32, 31)),
            ("rope.dimension_count", (U32, 2 * HEAD_DIM)),
            ("rope.scale_linear", (F32V, float("inf"))),
        ]
    ),
    ("qwen3", "rope.scale_linear", (F32V, 0.0)),
    ("gemma3", "rope.scale_linear", (F32V, -2.0)),
    ("gemma3", "attention.sliding_window_pattern", (I32, -3)),
    ("gemma3", "attention.sliding_window_pattern", (U32, 0)),
    ("gemma3", "attention.sliding_window_pattern", (F32V, 2.0)),
    ("gemma3", "attention.sliding_window_pattern", (STR, "2")),
    ("phi3", "rope.scaling.original_context_length", (U32, 0)),
    ("phi3", "rope.scaling.original_context_length", (I32, -16)),
    ("phi3", "rope.scaling.original_context_length", (U32, 2**32 - 1)),
    ("phi3", "rope.scaling.original_context_length", (F32V, 16.0)),
    ("phi3", "rope.scaling.original_context_length", None),
    ("phi3", "rope.scaling.attn_factor", (F32V, float("nan"))),
    ("phi3", "rope.scaling.attn_factor", (F32V, 0.0)),
    ("phi3", "rope.scaling.attn_factor", (F32V, -1.0)),
    ("phi3", "rope.scaling.attn_factor", (F32V, 1e30)),
    ("phi3", "rope.scaling.attn_factor", (STR, "1.2")),
]


@pytest.mark.parametrize(
    "arch,key,value", BAD_METADATA, ids=[f"{a}-{k}-{v}" for a, k, v in BAD_METADATA]
)
def test_bad_family_metadata_is_a_format_error_naming_the_key(tmp_path, arch, key, value):
    full_key = f"{arch}.{key}"
    path = write(tmp_path / "m.gguf", family_gguf(arch, {full_key: value}).data)
    with pytest.raises(ModelFormatError, match=re.escape(full_key)):
        load_and_generate(path)


def _phi3_factors(n: int, value: float = 1.5) -> B.Tensor:
    return B.Tensor("rope_factors_long.weight", (n,), F32, np.full(n, value, np.float32).tobytes())


@pytest.mark.parametrize(
    "tensor",
    [
        _phi3_factors(HEAD_DIM // 4 - 1),  # one factor short
        _phi3_factors(HEAD_DIM // 2),  # one per head dimension instead of per rotated pair
        _phi3_factors(HEAD_DIM // 4, float("nan")),
        _phi3_factors(HEAD_DIM // 4, -1.0),
        _phi3_factors(HEAD_DIM // 4, 0.0),
        B.Tensor("rope_factors_long.weight", (HEAD_DIM // 4, 2), F32, bytes(HEAD_DIM // 2 * 4)),
        B.Tensor("rope_factors_long.weight", (32,), quant.TYPES_BY_NAME["q5_0"].id, bytes(22)),
    ],
    ids=["short", "long", "nan", "negative", "zero", "2-d", "q5_0"],
)
def test_bad_phi3_longrope_factors_are_a_format_error(tmp_path, tensor):
    path = write(tmp_path / "m.gguf", family_gguf("phi3", tensors={tensor.name: tensor}).data)
    with pytest.raises(ModelFormatError, match=r"rope_factors_long\.weight|long_factor"):
        load_and_generate(path)


def test_phi3_short_factors_are_checked_when_they_apply(tmp_path):
    """With the original context at least the context in use, the short factors apply."""
    bad = B.Tensor("rope_factors_short.weight", (3,), F32, np.ones(3, np.float32).tobytes())
    overrides = {"phi3.rope.scaling.original_context_length": (U32, CONTEXT)}
    ok = write(tmp_path / "ok.gguf", family_gguf("phi3", overrides).data)
    assert len(load_and_generate(ok)) == 3
    path = write(tmp_path / "m.gguf", family_gguf("phi3", overrides, {bad.name: bad}).data)
    with pytest.raises(ModelFormatError, match=re.escape("rope_factors_short.weight")):
        load_and_generate(path)


def test_sliding_window_beyond_the_context_is_full_attention(tmp_path):
    """Phi-3-mini-128k's file says sliding_window 262144 for a 131072 context: a window past
    the context masks nothing, so it loads and runs like no window at all."""
    tokens = {}
    for window in (0, CONTEXT + 1, 262144):
        overrides = {"phi3.attention.sliding_window": (U32, window)}
        path = write(tmp_path / f"w{window}.gguf", family_gguf("phi3", overrides).data)
        tokens[window] = load_and_generate(path)
    assert tokens[CONTEXT + 1] == tokens[262144] == tokens[0]


# Values a damaged header could hold for the keys the families read, of every GGUF value type.
INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 63, 64, 65, 256, 2**24, 2**24 + 1, 2**31, 2**32 - 1, 2**63]
# The attention and RoPE keys, old and new; not the shape keys (embedding_length, head counts,
# block_count...), whose damage the whole-model mutators below reach and which would make
# nearly every case a refusal, nor the context length (tests/test_gguf_fuzz.py covers its
# values, and a context shorter than the prompt below is the caller's error, not the file's).
SHAPE_KEYS = ("block_count", "context_length", "embedding_length", "feed_forward_length")
SHAPE_KEYS += ("attention.head_count", "attention.head_count_kv", "vocab_size")


def _fuzzed_keys(a: str) -> list[str]:
    read = [k for k, _, _ in family_kvs(a) if k.startswith(a + ".")]
    extra = ["rope.scaling.type", "rope.scaling.factor", "rope.scale_linear"]
    extra += ["attention.sliding_window", "attention.sliding_window_pattern"]
    keys = dict.fromkeys(read + [f"{a}.{k}" for k in extra])
    return [k for k in keys if k[len(a) + 1 :] not in SHAPE_KEYS]


FAMILY_KEYS = {a: _fuzzed_keys(a) for a in FAMILIES}
metadata_values = st.one_of(
    st.tuples(st.just(B.UINT32), st.sampled_from([v for v in INTERESTING_INTS if v < 2**32])),
    st.tuples(st.just(B.INT32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(B.UINT64), st.sampled_from([*INTERESTING_INTS, 2**64 - 1])),
    st.tuples(st.just(B.INT64), st.sampled_from([-1, -(2**63), *INTERESTING_INTS[:-1]])),
    st.tuples(st.sampled_from([B.FLOAT32, B.FLOAT64]), st.floats(width=32)),
    st.tuples(st.just(B.BOOL), st.integers(0, 1)),
    st.tuples(st.just(B.STRING), st.sampled_from(["", "linear", "yarn", "none", "8", "longrope"])),
    st.tuples(
        st.just(B.ARRAY),
        st.tuples(st.just(B.UINT32), st.lists(st.sampled_from([0, 2, 8]), max_size=3)),
    ),
    st.none(),  # the key is absent
)


@settings(max_examples=60, deadline=None)
@given(
    arch=st.sampled_from(FAMILIES),
    data=st.data(),
    keep_native=st.booleans(),
)
def test_family_metadata_fuzzer(tmp_path_factory, arch, data, keep_native):
    """One to three of the family's keys get arbitrary values: the model loads and generates,
    or loading raises ModelFormatError (never anything else, not later while generating)."""
    keys = data.draw(st.lists(st.sampled_from(FAMILY_KEYS[arch]), min_size=1, max_size=2))
    overrides = {k: data.draw(metadata_values, label=k) for k in keys}
    path = write(tmp_path_factory.mktemp("f") / "f.gguf", family_gguf(arch, overrides).data)
    with native(keep_native), time_guard(10.0):
        try:
            tokens = load_and_generate(path)
        except ModelFormatError as e:
            assert str(path) in str(e)
            return
    assert len(tokens) == 3


# ---------------------------------------------------------------------- the file reader


def reader_file(arch: str) -> B.Built:
    """Small: one or two blocks of each new type, the family's metadata keys, and (phi3) the
    LongRoPE factor tensors; a file for the reader, not a whole model."""
    rng = np.random.default_rng(1)
    ts = []
    for qtype in NEW_TYPES:
        block = quant.TYPES_BY_NAME[qtype].block_size
        ts.append(blocks_tensor(rng, f"{qtype}.weight", qtype, (block, 2 if block == 32 else 1)))
    ts += [f32_tensor(rng, "output_norm.weight", 8)]
    if arch == "phi3":
        ts += [f32_tensor(rng, f"rope_factors_{k}.weight", 4) for k in ("long", "short")]
    return B.build(family_kvs(arch), ts)


@pytest.fixture(scope="module")
def reader_files() -> dict[str, B.Built]:
    return {a: reader_file(a) for a in FAMILIES}


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_truncation_is_rejected(tmp_path, reader_files, arch):
    built = reader_files[arch]
    path = tmp_path / "t.gguf"
    for keep_native in (False, True):
        with native(keep_native):
            assert load_or_reject(path, built.data)
    for n in range(len(built.data)):
        assert not load_or_reject(path, built.data[:n]), f"truncated to {n} bytes but loaded"


@pytest.mark.parametrize("arch", FAMILIES)
def test_mutation_fuzzer_seeded(tmp_path, reader_files, arch):
    built = reader_files[arch]
    rng = random.Random(f"20261206-{arch}")
    path = tmp_path / "m.gguf"
    outcomes = {True: 0, False: 0}
    for i in range(150):
        with native(i % 2 == 1):
            outcomes[
                load_or_reject(path, mutate(built.data, rng, built.offsets["header_end"]))
            ] += 1
    assert outcomes[True] > 0 and outcomes[False] > 30, outcomes


@settings(max_examples=60, deadline=None)
@given(
    arch=st.sampled_from(FAMILIES),
    keep_native=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutation_fuzzer_hypothesis(tmp_path_factory, arch, keep_native, edits):
    built = reader_file(arch)
    b = bytearray(built.data)
    for pos, value in edits:
        b[pos % built.offsets["header_end"]] = value
    with native(keep_native):
        load_or_reject(tmp_path_factory.mktemp("h") / "h.gguf", bytes(b))


def test_tensor_type_swapped_to_a_new_block_type(tmp_path, reader_files):
    """Each tensor's type id rewritten to each new block type: the byte sizes no longer match
    the data layout, so the file loads (sizes still fit) or is refused, never read past."""
    built = reader_files["phi3"]
    path = tmp_path / "s.gguf"
    for name in [n for n in (f"{q}.weight" for q in NEW_TYPES)] + ["rope_factors_long.weight"]:
        for qtype in NEW_TYPES:
            data = built.patched(f"tensor:{name}:type", "<I", quant.TYPES_BY_NAME[qtype].id)
            for keep_native in (False, True):
                with native(keep_native):
                    load_or_reject(path, data)


# ------------------------------------------------------ rows that are not whole blocks


@pytest.mark.parametrize(
    "qtype,row",
    [
        ("q5_0", 16),
        ("q5_0", 48),
        ("q5_1", 33),
        ("q5_1", 80),
        ("q4_k", 128),
        ("q4_k", 384),  # whole 32-weight blocks, not whole 256-weight super-blocks
        ("q5_k", 32),
        ("q5_k", 288),
        ("q6_k", 544),
    ],
)
def test_row_not_whole_blocks_is_refused_at_open_naming_the_tensor(tmp_path, qtype, row):
    t = quant.TYPES_BY_NAME[qtype]
    # data for the rows rounded up to whole blocks, as a reader that rounds would read it
    n_bytes = -(-row // t.block_size) * t.block_bytes * 2
    tensor = B.Tensor("blk.0.ffn_down.weight", (row, 2), t.id, bytes(n_bytes))
    data = B.build(family_kvs("qwen3"), [tensor]).data
    with pytest.raises(ModelFormatError) as exc:
        load_gguf(write(tmp_path / "r.gguf", data))
    message = str(exc.value)
    assert "tensor 'blk.0.ffn_down.weight' dims[0]" in message
    assert f"row length {row} is not a multiple of the {qtype} block size {t.block_size}" in message


@pytest.mark.parametrize("qtype", NATIVE_OPT_IN)
def test_row_length_patched_in_a_whole_model_is_refused(tmp_path, qtype):
    """A valid model whose first matrix of `qtype` gets a row length that is not whole blocks
    (its data is unchanged): refused when the file is opened, before any model is built."""
    built = family_gguf("gemma3")
    name = next(
        t.name for t in family_tensors("gemma3") if t.ggml_type == quant.TYPES_BY_NAME[qtype].id
    )
    row = C + quant.TYPES_BY_NAME[qtype].block_size // 2
    path = write(tmp_path / "p.gguf", built.patched(f"tensor:{name}:dims", "<Q", row))
    for keep_native in (False, True):
        with (
            native(keep_native),
            pytest.raises(ModelFormatError, match=re.escape(f"tensor {name!r} dims[0]")),
        ):
            load_and_generate(path)


@settings(max_examples=80, deadline=None)
@given(
    qtype=st.sampled_from(NEW_TYPES),
    row=st.integers(1, 1100),
    rows=st.integers(1, 3),
    keep_native=st.booleans(),
)
def test_row_length_property(tmp_path_factory, qtype, row, rows, keep_native):
    """Any row length: whole blocks load and convert (or stay native) to the declared shape;
    anything else is refused at open, naming the tensor."""
    t = quant.TYPES_BY_NAME[qtype]
    rng = np.random.default_rng(row)
    whole = row % t.block_size == 0
    n_blocks = -(-row // t.block_size) * rows
    raw = B._blocks(rng, n_blocks, t.block_bytes, SCALES[qtype])
    data = B.build([], [B.Tensor("w", (row, rows), t.id, raw)]).data
    path = write(tmp_path_factory.mktemp("r") / "r.gguf", data)
    if not whole:
        with pytest.raises(ModelFormatError, match=r"tensor 'w' dims\[0\]: row length"):
            load_gguf(path)
        return
    g = load_gguf(path)
    assert g.tensors["w"].shape == (rows, row) and g.tensors["w"].nbytes == len(raw)
    with native(keep_native):
        w, kind = g.weight("w")
    if kind in ("f16", "f32"):
        assert tuple(w.shape) == (rows, row)
    else:
        assert w.shape[0] == rows and w.shape[-1] == quant.row_bytes(kind, row)


# ------------------------------------------------------ whole models, memory-capped


def mutate_fields(built: B.Built, rng: random.Random) -> bytes:
    """One to three edits inside the value of a metadata key or the dims, type or offset of a
    tensor: unlike the byte mutator, most keep the file parseable, so they reach the model
    loader's checks of each value."""
    fields = sorted(
        (at, name)
        for name, at in built.offsets.items()
        if (name.startswith("kv:") and name.endswith(":value"))
        or (name.startswith("tensor:") and name.endswith((":dims", ":type", ":offset")))
    )
    ends = sorted(built.offsets.values())
    b = bytearray(built.data)
    for _ in range(rng.randint(1, 3)):
        at, _ = rng.choice(fields)
        end = min(e for e in ends if e > at)
        pos = rng.randrange(at, end)
        kind = rng.random()
        if kind < 0.4:
            b[pos] ^= 1 << rng.randrange(8)
        elif kind < 0.6 and at + 4 <= end:
            struct.pack_into("<I", b, at, rng.choice(INTERESTING_U32))
        elif kind < 0.8 and at + 8 <= end:
            struct.pack_into("<Q", b, at, rng.choice(INTERESTING_U64))
        else:
            b[pos] = rng.randrange(256)
    return bytes(b)


def test_mutated_family_models_load_or_refuse_within_bounds(tmp_path):
    """Both mutators through the whole model loader, for each family's file."""
    rng = random.Random(20261207)
    cases = []
    for arch in FAMILIES:
        built = family_gguf(arch)
        header_end = built.offsets["header_end"]
        for i in range(16):
            damaged = mutate_fields(built, rng) if i % 4 else mutate(built.data, rng, header_end)
            path = write(tmp_path / f"{arch}{i}.gguf", damaged)
            cases.append({"kind": "model", "path": str(path)})
    results = run_bounded(tmp_path, cases)
    failed = [r for r in results if r["outcome"] == "failed"]
    assert not failed, failed[:3]
    assert {r["outcome"] for r in results} == {"ok", "refused"}


def test_damaged_block_scales_in_a_whole_model(tmp_path):
    """inf/NaN scales in the converted types: conversion names the tensor; natively kept
    blocks load (the kernels compute what the blocks say)."""
    built = family_gguf("qwen3")
    for qtype in NEW_TYPES:
        t = quant.TYPES_BY_NAME[qtype]
        name = next(x.name for x in family_tensors("qwen3") if x.ggml_type == t.id)
        b = bytearray(built.data)
        at = built.offsets[f"data:{name}"] + SCALES[qtype][0]  # the first block's scale
        b[at : at + 2] = b"\x00\x7c"  # +inf
        path = write(tmp_path / f"s-{qtype}.gguf", bytes(b))
        for keep_native in (False, True):
            with native(keep_native):
                try:
                    load_and_generate(path)
                except ModelFormatError as e:
                    assert name in str(e)
