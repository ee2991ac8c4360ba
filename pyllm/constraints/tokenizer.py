"""An llguidance tokenizer made from a pyllm tokenizer: each token's bytes and the ending ids.

llguidance computes a mask by walking a trie of the vocabulary's byte strings, so it needs every
token's raw bytes (``Tokenizer.token_bytes``). Control tokens (``special_ids``: BOS, EOS, chat
markers) get a leading 0xFF byte, which no UTF-8 text contains: a grammar can then never spell
``<|im_end|>`` as text, and the ending ids are allowed only where the grammar may end. Building
one walks the whole vocabulary (~0.4 s for 49k tokens), so it is made once per tokenizer object.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from pyllm.types import Tokenizer

__all__ = ["llg_tokenizer"]

_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _TokenizerView:
    """What llguidance.TokenizerWrapper reads from a tokenizer: ids, bytes and an encoder."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        special = frozenset(getattr(tokenizer, "special_ids", ()))
        self._tokenizer = tokenizer
        self.eos_token_id = (
            tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eos_ids, default=0)
        )
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(special)
        self.tokens = [
            (b"\xff" if i in special else b"") + tokenizer.token_bytes(i)
            for i in range(tokenizer.vocab_size)
        ]

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="ignore")
        return self._tokenizer.encode(text, add_bos=False)


def llg_tokenizer(tokenizer: Tokenizer) -> Any:
    """The llguidance.LLTokenizer for ``tokenizer`` (cached while the tokenizer lives)."""
    with _LOCK:
        cached = _CACHE.get(tokenizer)
        if cached is None:
            import llguidance

            eos = sorted(tokenizer.eos_ids) or (
                [tokenizer.eos_id] if tokenizer.eos_id is not None else None
            )
            cached = llguidance.LLTokenizer(
                llguidance.TokenizerWrapper(_TokenizerView(tokenizer)),
                n_vocab=tokenizer.vocab_size,
                eos_token=eos,
            )
            _CACHE[tokenizer] = cached
        return cached
