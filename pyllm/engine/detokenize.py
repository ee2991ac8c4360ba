"""Streaming detokenization: turn token ids into text one token at a time.

A token can end in the middle of a UTF-8 character (byte-level BPE splits emoji and CJK characters
into several tokens), so printing each token's text as it comes would show garbage. The
:class:`IncrementalDetokenizer` holds back incomplete bytes and only ever returns whole
characters, and the text it returns, joined, is exactly ``tokenizer.decode(ids)``.

How: pyllm's tokenizers define ``decode`` as "join the tokens' bytes, read them as UTF-8 with
invalid bytes replaced by U+FFFD". Python's incremental UTF-8 decoder gives the same characters as
a one-shot decode of the same bytes, whatever the chunking, so feeding it each token's bytes
reproduces ``decode`` exactly. For a tokenizer that only offers the protocol's ``decode`` (no byte
table), the fallback re-decodes the whole sequence and emits the new suffix once it no longer ends
in a replacement character: slower (quadratic in the length) but correct for any tokenizer whose
decoded prefixes are stable.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids with :meth:`add`, get the new text back; :meth:`flush` at the end.

    :param tokenizer: any :class:`pyllm.types.Tokenizer`.
    :param skip_special: leave out special tokens, as ``decode(..., skip_special=True)`` does.

    ``"".join(d.add(i) for i in ids) + d.flush() == tokenizer.decode(ids, skip_special=...)``.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self._emitted: list[str] = []
        self._fast = all(
            hasattr(tokenizer, a) for a in ("special_ids", "strip_leading_space", "decode_bytes")
        )
        self._special: Collection[int] = getattr(tokenizer, "special_ids", frozenset())
        self._strip = bool(getattr(tokenizer, "strip_leading_space", False))
        self._seen_text_token = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._slow_text = ""  # fallback: the text emitted so far

    @property
    def text(self) -> str:
        """All text returned so far."""
        return "".join(self._emitted)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (possibly "")."""
        delta = self._add_fast(token_id) if self._fast else self._add_slow(token_id)
        if delta:
            self._emitted.append(delta)
        return delta

    def flush(self) -> str:
        """Return whatever is held back (an incomplete character comes out as U+FFFD)."""
        if self._fast:
            delta = self._utf8.decode(b"", final=True)
        else:
            full = self.tokenizer.decode(self.ids, skip_special=self.skip_special)
            delta = full[len(self._slow_text) :] if full.startswith(self._slow_text) else ""
            self._slow_text += delta
        if delta:
            self._emitted.append(delta)
        return delta

    def _add_fast(self, token_id: int) -> str:
        b = self.tokenizer.token_bytes(token_id)  # raises ValueError for an id out of range
        i = int(token_id)
        self.ids.append(i)
        special = i in self._special
        if special and self.skip_special:
            return ""
        if not special and not self._seen_text_token:
            self._seen_text_token = True
            if self._strip and b.startswith(b" "):
                b = b[1:]
        return self._utf8.decode(b)

    def _add_slow(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        full = self.tokenizer.decode(self.ids, skip_special=self.skip_special)
        if full.endswith(_REPLACEMENT) or not full.startswith(self._slow_text):
            return ""
        delta = full[len(self._slow_text) :]
        self._slow_text = full
        return delta
