"""Splitting text at sentence boundaries so that it can be rejoined exactly.

`split_sentences(text)` returns ``(sentence, separator)`` pairs whose concatenation is `text`,
character for character: the whitespace after each sentence is kept apart, so a translation of
each sentence can be put back with the original spacing and line breaks. `chunk_sentences`
groups consecutive sentences into pieces that fit a token budget, never across a line break
(paragraphs and lines stay where they were).

A boundary is end punctuation (. ! ? … and the CJK 。！？), optionally followed by closing quotes
or brackets, then whitespace, then something that can start a sentence (a capital or other
non-lowercase letter, a digit, an opening quote or bracket). A period after a known
abbreviation (Mr., Dr., e.g., ...) or a single capital letter (J. Smith) is not a boundary.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ABBREVIATIONS = frozenset(
    """
mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig no vol p pp approx dept est inc ltd co corp
jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen col lt sgt rev gov sen rep
""".split()
)

_END = re.compile(r"""([.!?…]+|[。！？]+)(["'”’»)\]]*)(\s+)""")
_CJK_END = "。！？"


def _is_boundary(text: str, m: re.Match[str]) -> bool:
    after = text[m.end() : m.end() + 1]
    if not after:
        return True
    punct = m.group(1)
    if punct[-1] in _CJK_END:
        return True
    if after.islower():
        return False
    if punct == ".":
        word = re.search(r"(\S+)$", text[: m.start()])
        token = word.group(1).lower().strip("(\"'“‘") if word else ""
        if token in ABBREVIATIONS or token.rstrip(".") in ABBREVIATIONS:
            return False
        if len(token) == 1 and token.isalpha():  # an initial: "J. Smith"
            return False
    return True


def split_sentences(text: str) -> list[tuple[str, str]]:
    """``[(sentence, separator), ...]`` with ``"".join(s + sep ...) == text``."""
    out: list[tuple[str, str]] = []
    start = 0
    # Leading whitespace belongs to no sentence: keep it as an empty sentence's separator.
    lead = len(text) - len(text.lstrip())
    if lead:
        out.append(("", text[:lead]))
        start = lead
    pos = start
    for m in _END.finditer(text, start):
        if m.start() < pos:
            continue
        if _is_boundary(text, m) or "\n" in m.group(3):
            out.append((text[pos : m.start(3)], m.group(3)))
            pos = m.end()
    # newlines inside what is left also end a sentence (titles, list items)
    rest = text[pos:]
    if rest:
        body = rest.rstrip()
        tail = rest[len(body) :]
        out.append((body, tail))
    return _split_lines(out)


def _split_lines(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Break sentences that contain line breaks (a heading line, list items) at the breaks."""
    out: list[tuple[str, str]] = []
    for sent, sep in pairs:
        parts = re.split(r"(\s*\n\s*)", sent)
        for i in range(0, len(parts) - 1, 2):
            out.append((parts[i], parts[i + 1]))
        out.append((parts[-1], sep))
    return [(s, sep) for s, sep in out if s or sep]


def chunk_sentences(
    pairs: list[tuple[str, str]], count: Callable[[str], int], max_tokens: int
) -> list[tuple[str, str]]:
    """Join consecutive sentences into ``(chunk, separator)`` pieces of at most `max_tokens`
    (by `count`) each, never across a line break; a single longer sentence stays whole."""
    out: list[tuple[str, str]] = []
    cur, cur_sep, cur_n = "", "", 0
    for sent, sep in pairs:
        n = count(sent)
        if cur and (cur_n + n > max_tokens or "\n" in cur_sep):
            out.append((cur, cur_sep))
            cur, cur_sep, cur_n = "", "", 0
        cur = cur + cur_sep + sent if cur else sent
        cur_sep, cur_n = sep, cur_n + n
        if not cur:  # leading whitespace only
            out.append(("", sep))
            cur_sep, cur_n = "", 0
    if cur or cur_sep:
        out.append((cur, cur_sep))
    return out
