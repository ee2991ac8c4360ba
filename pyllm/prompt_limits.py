"""Bounds a prompt must meet before any work is spent on it.

Tokenizing is the first costly step of a request (a 50 MB prompt took 30 s and 6 GB before the
context check refused it), so a prompt is measured in bytes first. Every token of a vocabulary
stands for at most `N` bytes of text, N being the longest token's byte length (special tokens'
text included, since chat prompts recognize them). A text the tokenizer keeps therefore needs at
least `bytes / N` tokens, and a prompt of more than `context_length * N` bytes cannot fit the
context: it is refused with ContextLengthError, or cut to its last `context_length * N` bytes
with `truncate="left"` (the context check after tokenizing then keeps the end, as before).
(Text a tokenizer drops or collapses, such as characters its vocabulary lacks, counts as kept:
such a prompt is refused although its few tokens would fit.)

Conversations are bounded by the bytes of their messages' contents (the template only adds to
them). Bytes objects are refused: a `bytes` is a sequence of ints, and was silently read as
token ids.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from pyllm.errors import ContextLengthError
from pyllm.types import Tokenizer

__all__ = ["bound_prompt", "max_prompt_bytes", "max_token_bytes"]

_longest: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def max_token_bytes(tokenizer: Tokenizer) -> int:
    """The byte length of the vocabulary's longest token (at least 1), computed once per
    tokenizer."""
    try:
        return _longest[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = 1
    for i in range(tokenizer.vocab_size):
        for text in _texts(tokenizer, i):
            longest = max(longest, len(text))
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced:
        _longest[tokenizer] = longest  # computed every time
    return longest


def _texts(tokenizer: Tokenizer, i: int) -> list[bytes]:
    out = []
    with contextlib.suppress(ValueError, KeyError, IndexError):
        out.append(tokenizer.token_bytes(i))
    with contextlib.suppress(ValueError, KeyError, IndexError, AttributeError):
        out.append(tokenizer.id_to_piece(i).encode("utf-8", "surrogatepass"))
    return out


def max_prompt_bytes(context_length: int, tokenizer: Tokenizer) -> int:
    """The most bytes of text a prompt may have and still fit `context_length` tokens."""
    return context_length * max_token_bytes(tokenizer)


def bound_prompt(
    prompt: Any, *, context_length: int, tokenizer: Tokenizer, truncate: str | None = None
) -> Any:
    """`prompt`, checked (or cut, for text with truncate="left") before it is tokenized."""
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise TypeError(
            "a prompt must be text (str), a list of {'role', 'content'} messages or "
            f"a list of token ids; got {type(prompt).__name__}: decode it first "
            "(e.g. prompt.decode('utf-8'))"
        )
    if isinstance(prompt, str):
        return _bound_text(prompt, context_length, tokenizer, truncate)
    if not isinstance(prompt, Sequence):
        return prompt  # the encoder names the wrong type
    if truncate is None and prompt and all(isinstance(m, Mapping) for m in prompt):
        contents = [m.get("content") for m in prompt]
        size = sum(len(c.encode("utf-8", "surrogatepass")) for c in contents if isinstance(c, str))
        limit = max_prompt_bytes(context_length, tokenizer)
        if size > limit:
            raise ContextLengthError(
                f"the messages hold {size:,} bytes of text, more than fits the context of "
                f"{context_length} tokens (at most {limit:,} bytes: the longest token is "
                f"{max_token_bytes(tokenizer)} bytes)"
            )
    return prompt  # token ids: the encoder checks each against the vocabulary


def _bound_text(text: str, context_length: int, tokenizer: Tokenizer, truncate: str | None) -> str:
    if len(text) <= context_length:  # at least one byte per token: always fits this bound
        return text
    limit = max_prompt_bytes(context_length, tokenizer)
    if len(text) * 4 <= limit:  # UTF-8 has at most 4 bytes per character
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    if truncate == "left":
        start = len(data) - limit
        while start < len(data) and data[start] & 0xC0 == 0x80:  # not inside a character
            start += 1
        return data[start:].decode("utf-8", "surrogatepass")
    raise ContextLengthError(
        f"the prompt is {len(data):,} bytes, more than fits the context of {context_length} "
        f"tokens (at most {limit:,} bytes: the longest token is {max_token_bytes(tokenizer)} "
        "bytes); refused before tokenizing (pass truncate='left' to keep the end of the prompt)"
    )
