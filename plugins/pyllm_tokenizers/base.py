"""What every built-in tokenizer shares: the id <-> bytes table, decoding, BOS/EOS handling,
splitting user text on special tokens when asked, and range checks on ids."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

# Tokens that end a turn in common chat formats; counted as end-of-generation when the vocabulary
# has them as special tokens (eos itself always is).
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
)


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_no_surrogates(text: str) -> None:
    """ValueError naming the position of the first lone surrogate (U+D800..U+DFFF): such a
    string is not valid Unicode and has no UTF-8 bytes (Python makes them from undecodable
    bytes with the surrogateescape error handler, e.g. in command-line arguments)."""
    if text.isascii():
        return
    m = _SURROGATE.search(text)
    if m is not None:
        raise ValueError(
            f"the text holds a lone surrogate U+{ord(m.group()):04X} at position "
            f"{m.start()} (not valid Unicode: was it decoded from bytes that are "
            f"not UTF-8?)"
        )


class BaseTokenizer:
    """A pyllm :class:`~pyllm.types.Tokenizer` over a table of token bytes.

    Subclasses provide ``_encode_text(text)`` for text without special tokens and fill the
    attributes below. Decoding is the same for every kind: the bytes of the tokens, joined and
    read as UTF-8 (invalid bytes become U+FFFD), which is exactly what
    :class:`pyllm.engine.detokenize.IncrementalDetokenizer` reproduces piece by piece.

    Extra attributes beyond the protocol (used by the incremental detokenizer):

    - ``special_ids``: control tokens (BOS, EOS, chat markers), dropped by ``skip_special``;
    - ``strip_leading_space``: SentencePiece models prefix the text with a space when encoding;
      decoding drops one leading space from the first non-special token to give the text back.
    """

    kind = "base"

    def __init__(
        self,
        *,
        pieces: list[str],
        token_bytes: list[bytes] | Callable[[], list[bytes]],
        special_ids: Iterable[int] = (),
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        pad_id: int | None = None,
        extra_eos_ids: Iterable[int] = (),
        add_bos: bool = False,
        strip_leading_space: bool = False,
    ) -> None:
        self._pieces = pieces
        # A callable is run on first use: the table is only needed to decode, and building it
        # (a translation per token) is a good part of a model's load time.
        self._bytes_table: list[bytes] | None = None if callable(token_bytes) else token_bytes
        self._make_bytes: Callable[[], list[bytes]] | None = (
            token_bytes if callable(token_bytes) else None
        )
        self.vocab_size = len(pieces)
        self.special_ids = frozenset(special_ids)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.unk_id = unk_id
        self.pad_id = pad_id
        self.add_bos = add_bos
        self.strip_leading_space = strip_leading_space
        eos = set(extra_eos_ids)
        if eos_id is not None:
            eos.add(eos_id)
        for i in self.special_ids:
            if pieces[i] in END_OF_TURN_TOKENS:
                eos.add(i)
        self.eos_ids = frozenset(eos)
        # Longest first, so "<|im_end|>" wins over a shorter special it starts with.
        specials = sorted({pieces[i] for i in self.special_ids if pieces[i]}, key=len, reverse=True)
        self._special_to_id = {pieces[i]: i for i in sorted(self.special_ids, reverse=True)}
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None

    # -- encoding -------------------------------------------------------------------------------

    # What becomes of text the vocabulary cannot represent (named in the warning).
    lost_text_fate = "encoded as the unknown token"

    def _encode_text(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_piece(self, text: str) -> tuple[list[int], bool]:
        """Ids of text without special tokens, and whether some of it could not be represented
        (by default: the unknown token came out)."""
        ids = self._encode_text(text)
        return ids, self.unk_id is not None and self.unk_id in ids

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = False
    ) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        check_no_surrogates(text)
        ids: list[int] = []
        if add_bos if add_bos is not None else self.add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no BOS token")
            ids.append(self.bos_id)
        lost = False

        def piece(part: str) -> None:
            nonlocal lost
            part_ids, part_lost = self._encode_piece(part)
            ids.extend(part_ids)
            lost = lost or part_lost

        if parse_special and self._special_re is not None:
            pos = 0
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    piece(text[pos : m.start()])
                ids.append(self._special_to_id[m.group()])
                pos = m.end()
            if pos < len(text):
                piece(text[pos:])
        elif text:
            piece(text)
        if lost:
            from pyllm.tokenizer import report_unrepresentable

            report_unrepresentable(self.unrepresentable(text), self.lost_text_fate)
        return ids

    def unrepresentable(self, text: str) -> list[tuple[int, str]]:
        """(position, character) for each character of `text` that this vocabulary cannot
        represent: encoding drops it or turns it into the unknown token, so decoding does not
        give it back. Matches the reference tokenizers' ids, which lose it the same way."""
        check_no_surrogates(text)
        lost = sorted(ch for ch in set(text) if self._encode_piece(ch)[1])
        if not lost:
            return []
        pattern = re.compile("|".join(map(re.escape, lost)))
        return [(m.start(), m.group()) for m in pattern.finditer(text)]

    # -- decoding -------------------------------------------------------------------------------

    def _check_id(self, token_id: int) -> int:
        try:
            i = int(token_id)  # accepts numpy / torch integer scalars
        except (TypeError, ValueError):
            raise ValueError(f"token id {token_id!r} is not an integer") from None
        if i != token_id or not 0 <= i < self.vocab_size:
            raise ValueError(
                f"token id {token_id!r} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return i

    @property
    def _bytes(self) -> list[bytes]:
        if self._bytes_table is None:
            assert self._make_bytes is not None  # __init__ sets one of the two
            self._bytes_table = self._make_bytes()
        return self._bytes_table

    def token_bytes(self, id: int) -> bytes:
        return self._bytes[self._check_id(id)]

    def id_to_piece(self, id: int) -> str:
        return self._pieces[self._check_id(id)]

    def decode_bytes(self, ids: Sequence[int], *, skip_special: bool = False) -> bytes:
        out = bytearray()
        first = True  # no non-special token seen yet
        for token_id in ids:
            i = self._check_id(token_id)
            special = i in self.special_ids
            if special and skip_special:
                continue
            b = self._bytes[i]
            if first and not special:
                first = False
                if self.strip_leading_space and b.startswith(b" "):
                    b = b[1:]
            out += b
        return bytes(out)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} kind={self.kind!r} vocab_size={self.vocab_size} "
            f"bos={self.bos_id} eos={self.eos_id}>"
        )
