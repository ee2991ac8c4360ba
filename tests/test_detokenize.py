"""The incremental detokenizer: deltas joined == tokenizer.decode(all ids), and no delta holds
half a character (no U+FFFD appears that the full decode does not have)."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyllm.engine.detokenize import IncrementalDetokenizer
from pyllm.tokenizer import load_tokenizer

FIXTURE_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def tok(smollm2_path: Path):
    from pyllm.weights.gguf import load_gguf

    return load_tokenizer(load_gguf(smollm2_path).metadata)


@pytest.fixture(scope="module")
def partial_ids(tok) -> list[int]:
    """Tokens whose bytes are not a whole UTF-8 text: the pieces of multi-byte characters."""
    out = []
    for i in range(tok.vocab_size):
        try:
            tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
    return out


def stream(tok, ids, **kw) -> tuple[list[str], str]:
    d = IncrementalDetokenizer(tok, **kw)
    deltas = [d.add(i) for i in ids]
    deltas.append(d.flush())
    return deltas, d.text


def check(tok, ids, *, skip_special: bool = False) -> None:
    deltas, text = stream(tok, ids, skip_special=skip_special)
    full = tok.decode(ids, skip_special=skip_special)
    assert "".join(deltas) == text == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


def test_python_incremental_utf8_matches_one_shot() -> None:
    """The property the fast path relies on, over awkward byte strings and every chunking."""
    samples = [b"\xf0\x9f\x91\xa9\xe2\x80\x8d", b"\xe4\xbd\xa0\xff\xe4", b"a\xf0\x9f\x98",
               b"\xed\xa0\x80x", b"\xc3", b"\x80\x80\xc3\xa9"]
    for data in samples:
        for cut in range(len(data) + 1):
            dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text = dec.decode(data[:cut]) + dec.decode(data[cut:]) + dec.decode(b"", final=True)
            assert text == data.decode("utf-8", errors="replace")


@FIXTURE_SETTINGS
@given(data=st.data())
def test_random_ids_reproduce_decode(tok, partial_ids, data) -> None:
    ids = data.draw(st.lists(
        st.one_of(st.integers(0, tok.vocab_size - 1), st.sampled_from(partial_ids)),
        max_size=40))
    check(tok, ids, skip_special=data.draw(st.booleans()))


@FIXTURE_SETTINGS
@given(text=st.text(max_size=40))
def test_encoded_text_streams_whole_characters(tok, text: str) -> None:
    ids = tok.encode(text)
    deltas, _ = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids)
    full = tok.decode(ids)
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


def test_emoji_with_zwj_is_held_until_complete(tok) -> None:
    text = "👩‍👩‍👧‍👦 ok 你好"
    ids = tok.encode(text)
    deltas, joined = stream(tok, ids)
    assert joined == text
    assert len([d for d in deltas if d]) < len(ids)  # some tokens completed nothing
    assert all(d.encode("utf-8").decode("utf-8") == d for d in deltas)


def test_out_of_range_id_raises(tok) -> None:
    d = IncrementalDetokenizer(tok)
    with pytest.raises(ValueError, match=str(tok.vocab_size)):
        d.add(tok.vocab_size)


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    """A SentencePiece tokenizer (leading-space stripping, byte fallback), trained here."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm") / "tiny"
    lines = ["hello world, héllo wörld", "你好 世界", "numbers 123 456", "emoji 😀 test"] * 30
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(out), vocab_size=320, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_file=str(out) + ".model")
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
             for i in range(n)]
    return load_tokenizer({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": np.array([sp.get_score(i) for i in range(n)], np.float32),
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    })


@FIXTURE_SETTINGS
@given(data=st.data())
def test_sentencepiece_random_ids(spm_tok, data) -> None:
    ids = data.draw(st.lists(st.integers(0, spm_tok.vocab_size - 1), max_size=30))
    check(spm_tok, ids, skip_special=data.draw(st.booleans()))


def test_sentencepiece_text_with_bos(spm_tok) -> None:
    text = " two spaces 😀 and 你好"
    ids = spm_tok.encode(text)  # BOS first
    deltas, joined = stream(spm_tok, ids, skip_special=True)
    assert joined == text == spm_tok.decode(ids, skip_special=True)


class ProtocolOnly:
    """A tokenizer with only the protocol's methods (no byte table): the slow path."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.vocab_size = inner.vocab_size

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return self._inner.decode(ids, skip_special=skip_special)

    def token_bytes(self, id: int) -> bytes:
        return self._inner.token_bytes(id)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=25))
def test_fallback_path_for_protocol_only_tokenizers(tok, text: str) -> None:
    ids = tok.encode(text)
    wrapped = ProtocolOnly(tok)
    deltas, joined = stream(wrapped, ids)
    assert joined == tok.decode(ids)
