"""Tokenizer parity and error handling.

Which reference holds where:

- SmolLM2's GGUF tokenizer: **llama.cpp** is the reference for every text (it reproduces the
  upstream tokenizer, including SmolLM2's rule that splits every digit off first). The test asks
  llama.cpp live when llama-cpp-python is importable, and otherwise reads the ids llama.cpp
  recorded in tests/data/smollm2_tokenizer_reference.json (made by make_tokenizer_reference.py).
- transformers' tokenizer built from the same GGUF is a second reference only on texts without
  digits: it drops the digit-splitting rule, so it differs on text like "   3." (shown below,
  where llama.cpp holds).
- SentencePiece: the `sentencepiece` library's own encode of a model trained here, for both the
  .model file and a GGUF `llama` vocabulary rebuilt from it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyllm.errors import ModelFormatError
from pyllm.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "smollm2_tokenizer_reference.json").read_text(encoding="utf-8"))
CORPUS = [c["text"] for c in REFERENCE["cases"]]
# PYLLM_TEST_NO_LLAMA_CPP=1 uses the recorded ids even where llama-cpp-python is installed (what CI
# does, since it cannot afford to compile llama.cpp).
HAVE_LLAMA_CPP = (importlib.util.find_spec("llama_cpp") is not None
                  and os.environ.get("PYLLM_TEST_NO_LLAMA_CPP", "") in ("", "0"))


def llama_cpp_ids(model: Path, texts: list[str], *, special: bool = False) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return [list(llm.tokenize(t.encode(), add_bos=False, special=special)) for t in texts]
    finally:
        llm.close()


@pytest.fixture(scope="module")
def metadata(smollm2_path: Path) -> dict:
    from pyllm.weights.gguf import load_gguf

    return dict(load_gguf(smollm2_path).metadata)


@pytest.fixture(scope="module")
def tok(metadata: dict):
    return load_tokenizer(metadata)


@pytest.fixture(scope="module")
def covered_bytes(tok) -> set[int]:
    """Bytes that have a single-byte token."""
    singles = (tok.token_bytes(i) for i in range(tok.vocab_size))
    return {b[0] for b in singles if len(b) == 1}


# --------------------------------------------------------------------------------------------
# SmolLM2 (byte-level BPE, pre-tokenizer "smollm") against llama.cpp
# --------------------------------------------------------------------------------------------


def test_reference_recording_is_for_this_model(smollm2_path: Path) -> None:
    digest = hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert digest == REFERENCE["model_sha256"], "re-run tests/data/make_tokenizer_reference.py"


def test_smollm2_ids_equal_llama_cpp(tok, smollm2_path: Path) -> None:
    recorded = [c["ids"] for c in REFERENCE["cases"]]
    if HAVE_LLAMA_CPP:
        live = llama_cpp_ids(smollm2_path, CORPUS)
        assert live == recorded, "llama.cpp changed: re-run make_tokenizer_reference.py"
    for text, expected in zip(CORPUS, recorded):
        assert tok.encode(text) == expected, text


def test_smollm2_special_tokens_equal_llama_cpp(tok, smollm2_path: Path) -> None:
    cases = REFERENCE["special_cases"]
    texts = [c["text"] for c in cases]
    expected = llama_cpp_ids(smollm2_path, texts, special=True) if HAVE_LLAMA_CPP else \
        [c["ids"] for c in cases]
    for text, ids in zip(texts, expected):
        assert tok.encode(text, parse_special=True) == ids, text


@pytest.mark.parametrize("pre", sorted(REFERENCE["pre_variants"]))
def test_pre_tokenizer_variants_equal_llama_cpp(metadata: dict, pre: str) -> None:
    """The same vocabulary under other families' pre-tokenizers (recorded from llama.cpp)."""
    tok = load_tokenizer({**metadata, "tokenizer.ggml.pre": pre})
    for text, expected in zip(CORPUS, REFERENCE["pre_variants"][pre]):
        assert tok.encode(text) == expected, (pre, text)


def test_round_trip_corpus(tok) -> None:
    for text in CORPUS:
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_round_trip_random_text(tok, covered_bytes: set[int], text: str) -> None:
    # SmolLM2's vocabulary lacks 21 of the 256 byte tokens (e.g. 0xF1, which starts the UTF-8 of
    # U+40000..U+7FFFF); llama.cpp drops those bytes too, so only covered text can round-trip.
    assume(all(b in covered_bytes for b in text.encode()))
    assert tok.decode(tok.encode(text)) == text


# Text with bytes SmolLM2 has no token for (0x04, 0x06, 0x13, 0x14, 0x16, 0x1d; 0xf1 starts the
# UTF-8 of U+50000): llama.cpp drops such a byte after merging, so it still parts its neighbours.
UNTOKENIZABLE = ["/\x16/", "ab\x16cd", "::\x16::", "\x04\x06\x13\x14\x16\x1d", "x\U00050000y",
                 "  \x16  ", "a \x16 b", "\x16hello", "it\x16'll"]


@pytest.mark.parametrize("left,right", [("/", "/"), ("ab", "cd"), ("::", "::")])
def test_a_byte_without_a_token_still_parts_its_neighbours(tok, left: str, right: str) -> None:
    """Found by the live comparison below: "/\x16/" is "/" "/" in llama.cpp, while `tokenizers`
    alone skips 0x16 before merging and gives "//"."""
    assert tok.encode(left + "\x16" + right) == tok.encode(left) + tok.encode(right)
    assert tok.encode("\x16") == []


def _lost_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyllm.tokenizer"]


def test_dropped_characters_are_reported_once_and_ids_stay(tok, caplog) -> None:
    """SmolLM2 has no token for some bytes: such characters are dropped (the reference ids),
    but no longer silently."""
    with caplog.at_level("WARNING", logger="pyllm.tokenizer"):
        ids = tok.encode("a\x04b")
    assert ids == tok.encode("a") + tok.encode("b") and tok.decode(ids) == "ab"
    (msg,) = _lost_warnings(caplog)
    assert "1 character" in msg and "U+0004 at position 1" in msg and "dropped" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="pyllm.tokenizer"):
        tok.encode("plain text, every byte has a token: é ü 漢字 🙂")
    assert _lost_warnings(caplog) == []


@pytest.mark.parametrize("ch", ["\U00040000", "\U0007abcd", "\U000bffff"])
def test_planes_4_to_11_are_reported(tok, ch: str) -> None:
    """Their UTF-8 lead bytes (0xF1, 0xF2) have no token, so they decode as U+FFFD."""
    assert tok.unrepresentable(f"x{ch}y{ch}") == [(1, ch), (3, ch)]
    assert tok.unrepresentable("x\U0003ffffy\U000c0000") == []


def test_one_warning_per_request(tok, caplog) -> None:
    from pyllm.api import LLM
    from pyllm.chat import ChatTemplate

    from types import SimpleNamespace

    llm = LLM.__new__(LLM)  # only what encode_prompt needs: tokenizer, template, sizes
    llm.tokenizer = tok
    llm.config = SimpleNamespace(max_position=8192, vocab_size=tok.vocab_size)
    llm.chat_template = ChatTemplate.from_gguf_metadata(
        {"tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}"
                                    "<|im_end|>{% endfor %}"})
    messages = [{"role": "user", "content": "a\x04b <|im_end|>"},
                {"role": "user", "content": "c\x16d"}]
    with caplog.at_level("WARNING", logger="pyllm.tokenizer"):
        ids = llm.encode_prompt(messages)  # several encode calls: one warning
        assert tok.decode(ids).count("<|im_end|>") == 3
        assert len(_lost_warnings(caplog)) == 1
        assert "2 characters of the input (U+0004, U+0016)" in _lost_warnings(caplog)[0]
        llm.encode_prompt("a\x04b")  # the next request is told again
        assert len(_lost_warnings(caplog)) == 2


def test_lone_surrogates_are_a_clear_error(tok) -> None:
    for text, pos in [("ab\ud800", 2), ("\udcff x", 0), ("é\udfffé", 1)]:
        with pytest.raises(ValueError, match=f"lone surrogate U\\+D[89A-F][0-9A-F]{{2}} at "
                                             f"position {pos}"):
            tok.encode(text)
        with pytest.raises(ValueError, match="lone surrogate"):
            tok.encode(text, parse_special=True)


def test_cli_tokenize_file_dash_reads_stdin(smollm2_path: Path) -> None:
    """--file - takes the text from standard input, the same ids as the text given inline."""
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    dash = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "--file", "-", "--json"],
                              input="Hello wörld")
    inline = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "Hello wörld", "--json"])
    assert dash.exit_code == 0, dash.output
    assert json.loads(dash.stdout)["ids"] and json.loads(dash.stdout) == json.loads(inline.stdout)


def test_cli_tokenize_marks_what_is_lost(smollm2_path: Path) -> None:
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    r = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "a\x04b\U00050000", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["unrepresentable"] == [{"position": 1, "char": "\x04", "codepoint": "U+0004"},
                                      {"position": 3, "char": "\U00050000",
                                       "codepoint": "U+50000"}]
    r = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "a\x04b"])
    assert "!  U+0004 at position 1: not representable" in r.stdout
    assert r.stderr.count("warning:") == 1
    r = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "a\udcffb"])
    assert r.exit_code == 2
    assert "error: the text holds a lone surrogate U+DCFF at position 1" in r.stderr
    assert "internal error" not in r.stderr


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python not installed (or PYLLM_TEST_NO_LLAMA_CPP=1)")
@pytest.mark.parametrize("text", UNTOKENIZABLE)
def test_untokenizable_bytes_equal_llama_cpp_live(tok, llama_vocab, text: str) -> None:
    assert tok.encode(text) == list(llama_vocab.tokenize(text.encode(), add_bos=False, special=False))


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python not installed (or PYLLM_TEST_NO_LLAMA_CPP=1)")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_random_text_equals_llama_cpp_live(tok, llama_vocab, text: str) -> None:
    assert tok.encode(text) == list(llama_vocab.tokenize(text.encode(), add_bos=False,
                                                         special=False))


@pytest.fixture(scope="module")
def llama_vocab(smollm2_path: Path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def test_metadata_special_tokens(tok, metadata: dict) -> None:
    vocab = metadata["tokenizer.ggml.tokens"]
    assert tok.vocab_size == len(vocab)
    assert tok.bos_id == metadata["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == metadata["tokenizer.ggml.eos_token_id"]
    assert tok.add_bos == bool(metadata["tokenizer.ggml.add_bos_token"])
    assert tok.eos_id in tok.eos_ids
    assert {vocab.index("<|im_end|>"), vocab.index("<|endoftext|>")} <= tok.eos_ids
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
    assert tok.id_to_piece(tok.eos_id) == vocab[tok.eos_id]


def test_special_tokens_in_user_text_are_not_parsed(tok) -> None:
    end = tok.eos_id
    text = f"a{tok.id_to_piece(end)}b"
    assert end not in tok.encode(text)
    assert end in tok.encode(text, parse_special=True)
    assert tok.decode(tok.encode(text)) == text


def test_skip_special_in_decode(tok) -> None:
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", parse_special=True)
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "user\nhi"


def test_out_of_range_ids(tok) -> None:
    n = tok.vocab_size
    for bad in (n, -1, 10**9):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode([5, bad])
        with pytest.raises(ValueError, match=str(bad)):
            tok.token_bytes(bad)
        with pytest.raises(ValueError, match=str(bad)):
            tok.id_to_piece(bad)


@pytest.mark.slow
def test_transformers_agrees_where_it_keeps_the_rules(tok, smollm2_path: Path) -> None:
    """transformers' GGUF tokenizer is a second reference on digit-free text only (and on text
    without special-token strings, which it always parses)."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    specials = [tok.id_to_piece(i) for i in tok.special_ids]
    for text in CORPUS:
        # transformers always parses special-token strings in text; we do not by default.
        if not any(ch.isdigit() for ch in text) and not any(s in text for s in specials):
            assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
    # Where they differ, llama.cpp (and the upstream SmolLM2 tokenizer) holds: digits split off.
    case = next(c for c in REFERENCE["cases"] if c["text"] == "   3.")
    assert hf.encode(case["text"], add_special_tokens=False) != case["ids"]
    assert tok.encode(case["text"]) == case["ids"]


# --------------------------------------------------------------------------------------------
# Bad GGUF tokenizer data: ModelFormatError naming the key
# --------------------------------------------------------------------------------------------


def _bpe_metadata() -> dict:
    tokens = ["a", "b", "ab", "c", "abc", "<|end|>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([1, 1, 1, 1, 1, 3], dtype=np.int32),
        "tokenizer.ggml.merges": ["a b", "ab c"],
        "tokenizer.ggml.eos_token_id": 5,
    }


def test_tiny_bpe_works() -> None:
    tok = load_tokenizer(_bpe_metadata())
    assert tok.encode("abcab") == [4, 2]
    assert tok.decode([4, 2, 5]) == "abcab<|end|>"
    assert tok.eos_ids == {5}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"tokenizer.ggml.pre": "no-such-pre"}, "tokenizer.ggml.pre"),
        ({"tokenizer.ggml.merges": ["a b", "abc"]}, r"tokenizer.ggml.merges\[1\]"),
        ({"tokenizer.ggml.merges": ["a  b"]}, r"tokenizer.ggml.merges\[0\]"),
        ({"tokenizer.ggml.merges": ["a z"]}, r"tokenizer.ggml.merges\[0\]"),
        ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.tokens": ["a", 3]}, r"tokenizer.ggml.tokens\[1\]"),
        ({"tokenizer.ggml.token_type": np.array([1, 1], dtype=np.int32)}, "token_type"),
        ({"tokenizer.ggml.token_type": np.array([1, 1, 1, 9, 1, 3])}, r"token_type\[3\]"),
        ({"tokenizer.ggml.eos_token_id": 6}, "tokenizer.ggml.eos_token_id"),
        ({"tokenizer.ggml.bos_token_id": -1}, "tokenizer.ggml.bos_token_id"),
        ({"tokenizer.ggml.model": "bert"}, "no tokenizer plugin for 'bert'"),
    ],
)
def test_bad_gguf_vocab_names_the_key(change: dict, key: str) -> None:
    md = {**_bpe_metadata(), **change}
    md = {k: v for k, v in md.items() if v is not None}
    with pytest.raises(ModelFormatError, match=key):
        load_tokenizer(md)


def test_unknown_pre_tokenizer_message_lists_known(metadata: dict) -> None:
    with pytest.raises(ModelFormatError, match=r"'tekken-x'.*smollm"):
        load_tokenizer({**metadata, "tokenizer.ggml.pre": "tekken-x"})


def test_error_names_the_model_file() -> None:
    with pytest.raises(ModelFormatError, match=r"^model\.gguf: tokenizer\.ggml\.pre"):
        load_tokenizer({**_bpe_metadata(), "tokenizer.ggml.pre": "?"}, origin="model.gguf")


# --------------------------------------------------------------------------------------------
# tokenizer.json
# --------------------------------------------------------------------------------------------


def test_hf_json_matches_gguf_tokenizer(tok, tmp_path: Path) -> None:
    """A tokenizer.json of the same vocabulary gives llama.cpp's ids too."""
    (tmp_path / "tokenizer.json").write_text(tok._backend.to_str(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
         "add_bos_token": False}))
    hf = load_tokenizer({}, tmp_path)
    assert hf.kind == "hf-json"
    assert (hf.bos_id, hf.eos_id, hf.add_bos) == (tok.bos_id, tok.eos_id, False)
    for case in REFERENCE["cases"]:
        ids = hf.encode(case["text"])
        assert ids == case["ids"], case["text"]
        assert hf.decode(ids) == case["text"]
    assert tok.eos_id not in hf.encode("<|im_end|>")
    assert hf.encode("<|im_end|>", parse_special=True) == [tok.eos_id]


def test_hf_json_metaspace_style(tmp_path: Path) -> None:
    """A SentencePiece-style tokenizer.json (▁ for spaces, byte fallback) decodes like its own
    library does and round-trips."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *alphabet])
    backend.train_from_iterator(CORPUS * 3, trainer)
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    hf = load_tokenizer({}, path)
    assert hf.strip_leading_space
    for text in CORPUS:
        ids = hf.encode(text)
        assert ids == backend.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == backend.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", ["tokenizer.json", "tok.model"])
def test_missing_or_corrupt_tokenizer_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ModelFormatError, match="not found"):
        load_tokenizer({}, path)
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelFormatError, match=str(path)):
        load_tokenizer({}, path)


# --------------------------------------------------------------------------------------------
# SentencePiece: a model trained here, as a .model file and as a GGUF llama vocabulary
# --------------------------------------------------------------------------------------------

SPM_TRAIN = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "Tokenizers split text into pieces; pieces map to ids.",
    "def main():\n    print('hello world')\n",
    "你好，世界！ 今天天气很好。",
    "Numbers like 12345 and 3.14 appear in text.",
] * 20


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm") / "tiny"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TRAIN), model_prefix=str(out), vocab_size=420,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, num_threads=1,
    )
    return out.with_suffix(".model")


def gguf_llama_metadata(model_file: Path) -> dict:
    """What a GGUF converter writes for a SentencePiece llama vocabulary."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": np.array([sp.get_score(i) for i in range(n)], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
    }


SPM_TEXTS = [t for t in CORPUS if t] + ["  two leading", "tab\tand\nnewline", "emoji 🧑‍💻!"]


@pytest.mark.parametrize("source", ["model-file", "gguf-llama"])
def test_sentencepiece_matches_library(spm_model: Path, source: str) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    if source == "model-file":
        tok = load_tokenizer({}, spm_model)
    else:
        tok = load_tokenizer(gguf_llama_metadata(spm_model))
        assert tok.kind == "llama"
    assert tok.bos_id == sp.bos_id() and tok.eos_id == sp.eos_id() and tok.add_bos
    for text in SPM_TEXTS:
        ids = tok.encode(text, add_bos=False)
        assert ids == sp.encode(text), text
        assert tok.encode(text) == [sp.bos_id(), *ids]
        assert tok.decode(ids) == sp.decode(ids) == text
        assert tok.decode(tok.encode(text), skip_special=True) == text


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=40))
def test_sentencepiece_random_text(spm_model: Path, text: str) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = load_tokenizer(gguf_llama_metadata(spm_model))
    assert tok.encode(text, add_bos=False) == sp.encode(text)
    assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_sentencepiece_special_tokens(spm_model: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = load_tokenizer(gguf_llama_metadata(spm_model))
    text = "hi</s>there"
    assert tok.eos_id not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == "<s>" + text
    # Parsed, each text fragment is encoded on its own, with its own space prefix (llama.cpp's
    # rule; checked against llama.cpp live below when it is installed).
    ids = tok.encode(text, add_bos=False, parse_special=True)
    assert ids == [*sp.encode("hi"), tok.eos_id, *sp.encode("there")]


def test_bad_llama_vocab_names_the_key(spm_model: Path) -> None:
    md = gguf_llama_metadata(spm_model)
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.scores"):
        load_tokenizer({**md, "tokenizer.ggml.scores": md["tokenizer.ggml.scores"][:-1]})
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.scores"):
        load_tokenizer({k: v for k, v in md.items() if k != "tokenizer.ggml.scores"})
    tokens = list(md["tokenizer.ggml.tokens"])
    tokens[10] = tokens[11]
    with pytest.raises(ModelFormatError, match=r"tokenizer.ggml.tokens\[11\]"):
        load_tokenizer({**md, "tokenizer.ggml.tokens": tokens})


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python not installed (or PYLLM_TEST_NO_LLAMA_CPP=1)")
def test_gguf_llama_vocab_matches_llama_cpp(spm_model: Path, smollm2_path: Path,
                                             tmp_path: Path) -> None:
    """The rebuilt SentencePiece vocabulary tokenizes like llama.cpp's own SPM tokenizer."""
    from gguf import GGUFWriter

    from pyllm.weights.gguf import load_gguf

    md = gguf_llama_metadata(spm_model)
    path = tmp_path / "spm-vocab.gguf"
    writer = GGUFWriter(path, arch="llama")
    # llama.cpp wants the architecture's hyper-parameters even for vocab_only: borrow SmolLM2's.
    for key, value in load_gguf(smollm2_path).metadata.items():
        if key.startswith("llama.") and isinstance(value, int):
            writer.add_uint32(key, value)
        elif key.startswith("llama.") and isinstance(value, float):
            writer.add_float32(key, value)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", md["tokenizer.ggml.tokens"])
    writer.add_array("tokenizer.ggml.scores", md["tokenizer.ggml.scores"].tolist())
    writer.add_array("tokenizer.ggml.token_type", md["tokenizer.ggml.token_type"].tolist())
    for k in ("bos_token_id", "eos_token_id", "unknown_token_id"):
        writer.add_uint32("tokenizer.ggml." + k, md["tokenizer.ggml." + k])
    writer.add_bool("tokenizer.ggml.add_space_prefix", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tok = load_tokenizer(md)
    for text, ids in zip(SPM_TEXTS, llama_cpp_ids(path, SPM_TEXTS)):
        assert tok.encode(text, add_bos=False) == ids, text
    special = ["hi</s>there", "<s>a</s></s> b"]
    for text, ids in zip(special, llama_cpp_ids(path, special, special=True)):
        assert tok.encode(text, add_bos=False, parse_special=True) == ids, text
