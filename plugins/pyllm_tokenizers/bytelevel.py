"""GPT-2's byte-level alphabet: every byte has a printable stand-in character.

Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
bytes (controls, space, soft hyphen...) are given the characters U+0100, U+0101, ... in byte
order. Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM, Qwen2) are written in this alphabet,
so ``"Ġthe"`` is the bytes ``b" the"``.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


@lru_cache(maxsize=1)
def _translation() -> tuple[frozenset[str], dict[int, str]]:
    """The alphabet, and a str.translate table sending each of its characters to chr(byte)."""
    return frozenset(char_to_byte()), {ord(c): chr(b) for c, b in char_to_byte().items()}


def piece_to_bytes(piece: str) -> bytes:
    """The bytes a byte-level piece stands for. A character outside the alphabet (seen in some
    hand-edited vocabularies) is taken as its own UTF-8 bytes."""
    alphabet, translation = _translation()
    if alphabet.issuperset(piece):  # the common case, done in C
        return piece.translate(translation).encode("latin-1")
    table = char_to_byte()
    out = bytearray()
    for ch in piece:
        b = table.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)
