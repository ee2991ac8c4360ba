"""Requests are bounded before work starts (pyllm/prompt_limits.py), and a model whose chat
template is refused still runs plain prompts (pyllm/chat.py)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

import pyllm
from pyllm import ContextLengthError, SamplingParams
from pyllm.chat import ChatTemplateError
from pyllm.cli.main import cli
from pyllm.prompt_limits import max_prompt_bytes, max_token_bytes

CTX = 64
ONE = SamplingParams(temperature=0.0, max_tokens=1)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pyllm.load(smollm2_path, context_length=CTX, progress=False)


@pytest.fixture
def no_tokenizing(llm, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the prompt was tokenized")

    monkeypatch.setattr(llm.tokenizer, "encode", refuse)


def test_the_byte_bound_follows_the_longest_token(llm):
    tok = llm.tokenizer
    longest = max(len(tok.token_bytes(i)) for i in range(tok.vocab_size))
    assert max_token_bytes(tok) >= longest
    assert max_prompt_bytes(CTX, tok) == CTX * max_token_bytes(tok)


def test_a_huge_prompt_is_refused_before_tokenizing(llm, no_tokenizing):
    """A 50 MB prompt was tokenized whole (30 s, 6 GB) before the context check refused it."""
    text = "hello world " * 4_000_000
    start = time.perf_counter()
    with pytest.raises(ContextLengthError, match=r"48,000,000 bytes.*before tokenizing"):
        llm.generate(text, ONE)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ContextLengthError, match="bytes"):
        llm.score(text)


def test_a_conversation_too_large_is_refused_before_rendering(llm, no_tokenizing, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the conversation was rendered")

    monkeypatch.setattr(llm.chat_template, "render", refuse)
    big = [{"role": "user", "content": "x" * (max_prompt_bytes(CTX, llm.tokenizer) + 1)}]
    with pytest.raises(ContextLengthError, match="bytes of text"):
        llm.chat(big, ONE)


def test_truncate_left_keeps_the_same_end(llm):
    """With truncate='left' a long text is cut to its last bytes before tokenizing; the tokens
    kept are those the whole text ends with."""
    text = " ".join(f"word{i}" for i in range(12_000))  # ~ 100 KB, far over the bound
    assert len(text.encode()) > max_prompt_bytes(CTX, llm.tokenizer)
    whole = llm.tokenizer.encode(text)
    cut = llm.encode_prompt(text, truncate="left")
    assert len(cut) < len(whole) and cut[-(CTX - 1):] == whole[-(CTX - 1):]
    out = llm.generate(text, ONE, truncate="left")[0]
    assert len(out.token_ids) == 1


def test_a_prompt_that_fits_the_bound_is_unchanged(llm):
    text = "é" * 100
    assert llm.encode_prompt(text) == llm.tokenizer.encode(text)


@pytest.mark.parametrize("prompt", [b"hi", bytearray(b"hi"), memoryview(b"hi")])
def test_bytes_are_refused_not_read_as_token_ids(llm, prompt):
    with pytest.raises(TypeError, match=r"decode it first"):
        llm.generate([prompt], ONE)
    with pytest.raises(TypeError, match=r"decode it first"):
        llm.encode_prompt(prompt)


@pytest.mark.parametrize("ids,bad", [([1, -1], "-1"), ([49152], "49152"), ([2**63], str(2**63))])
def test_token_ids_are_checked_against_the_vocabulary(llm, ids, bad):
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        llm.generate([ids], ONE)


# ---------------------------------------------------------------------- a refused template


@pytest.fixture(scope="module")
def refused_template_model(smollm2_path, tmp_path_factory):
    """The default model with its chat template replaced (same length, so every offset holds)
    by one that uses {% include %}."""
    from pyllm.weights.gguf import load_gguf

    data = bytearray(smollm2_path.read_bytes())
    old = load_gguf(smollm2_path).metadata["tokenizer.chat_template"].encode()
    bad = b"{% include 'other.jinja' %}"
    new = bad + b"{#" + b" " * (len(old) - len(bad) - 4) + b"#}"
    at = data.index(old)
    data[at:at + len(old)] = new
    path = tmp_path_factory.mktemp("tpl") / "refused-template.gguf"
    path.write_bytes(bytes(data))
    return path


def test_a_refused_template_blocks_only_chat(refused_template_model):
    llm = pyllm.load(refused_template_model, context_length=CTX, progress=False)
    assert llm.generate("Hello", ONE)[0].token_ids
    with pytest.raises(ChatTemplateError, match="include"):
        llm.chat([{"role": "user", "content": "Hello"}], ONE)


def test_the_cli_runs_plain_prompts_and_names_the_refusal_for_chat(refused_template_model):
    args = ["run", str(refused_template_model), "Hello", "--max-tokens", "1", "--ctx", str(CTX)]
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    chat = CliRunner().invoke(cli, [*args, "--chat"])
    assert chat.exit_code != 0
    assert "error: chat template refused" in chat.output and "include" in chat.output
    assert "Traceback" not in chat.output
