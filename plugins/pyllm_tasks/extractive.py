"""Constrained decoding: the answer must be a span of the context, token for token.

The context is tokenized on its own; its tokens' byte offsets are known from `token_bytes`. While
decoding, the set of *candidates* holds every place in the context that the answer so far
matches: (start byte, index of the next context token). At each step only the tokens that
continue some candidate are allowed, plus the end of the answer once it is non-empty. The first
token may also be a context token without its leading space ("Paris" for the context's
" Paris"), since an answer starts a turn and rarely with a space. When the answer ends, the
earliest candidate gives the span's character offsets.

`decode_spans` ranks the spans that `SpanConstraint` allows as complete answers (each scored
with the end of the answer after it) rather than decoding greedily, which copies the context
until a sentence ends.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_VOCAB_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab_index(tokenizer: Any) -> dict[bytes, int]:
    """bytes -> token id (the lowest id when several tokens stand for the same bytes)."""
    index = _VOCAB_INDEX.get(tokenizer)
    if index is None:
        index = {}
        for i in range(tokenizer.vocab_size):
            index.setdefault(tokenizer.token_bytes(i), i)
        _VOCAB_INDEX[tokenizer] = index
    return index


@dataclass
class Span:
    text: str
    start: int  # character offsets into the context, end exclusive
    end: int
    logprob: float  # the model's (unconstrained) log-prob of the answer tokens
    token_ids: list[int]


class SpanConstraint:
    """Which tokens may come next so that the answer stays a span of `context`."""

    def __init__(self, tokenizer: Any, context: str, end_ids: Sequence[int]) -> None:
        self.context = context
        self.ids = tokenizer.encode(context, add_bos=False)
        pieces = [tokenizer.token_bytes(t) for t in self.ids]
        data = context.encode("utf-8")
        joined = b"".join(pieces)
        shift = 0
        if joined != data:
            if joined == b" " + data:  # SentencePiece's leading space
                shift = 1
            else:
                raise ValueError("cannot align the context's tokens with its text")
        self.starts, self.ends = [], []
        pos = -shift
        for p in pieces:
            self.starts.append(max(pos, 0))
            pos += len(p)
            self.ends.append(max(pos, 0))
        self.byte_to_char = _byte_to_char(context)
        self.end_ids = list(end_ids)
        index = vocab_index(tokenizer)
        first: dict[int, list[tuple[int, int]]] = {}
        for i, (t, p) in enumerate(zip(self.ids, pieces)):
            first.setdefault(t, []).append((self.starts[i], i + 1))
            bare = p.lstrip(b" ")
            if bare != p and bare and bare in index:  # the token without its leading space
                first.setdefault(index[bare], []).append(
                    (self.starts[i] + len(p) - len(bare), i + 1)
                )
        self.first = first
        self.cands: list[tuple[int, int]] | None = None
        self.tokens: list[int] = []

    def allowed(self) -> list[int]:
        if self.cands is None:
            return list(self.first)
        nxt = {self.ids[j] for _, j in self.cands if j < len(self.ids)}
        return sorted(nxt) + self.end_ids

    def advance(self, token: int) -> bool:
        """Take `token`; returns True when the answer is finished (an end token, or the context
        has nothing more to continue it)."""
        if token in self.end_ids and self.cands:
            return True
        self.tokens.append(token)
        if self.cands is None:
            self.cands = list(self.first[token])
        else:
            self.cands = [
                (s, j + 1) for s, j in self.cands if j < len(self.ids) and self.ids[j] == token
            ]
        return all(j >= len(self.ids) for _, j in self.cands)

    def span(self, logprob: float) -> Span:
        if not self.cands:
            return Span("", 0, 0, logprob, [])
        start_b, j = min(self.cands)
        end_b = self.ends[j - 1]
        start, end = self.byte_to_char[start_b], _char_end(self.byte_to_char, end_b)
        text = self.context[start:end]
        lead = len(text) - len(text.lstrip())
        trail = len(text) - len(text.rstrip())
        start, end = start + lead, end - trail
        return Span(self.context[start:end], start, end, logprob, list(self.tokens))


def _byte_to_char(text: str) -> list[int]:
    """For each byte offset (0..len), the index of the character it falls in (len at the end)."""
    out = []
    for ci, ch in enumerate(text):
        out.extend([ci] * len(ch.encode("utf-8")))
    out.append(len(text))
    return out


def _char_end(byte_to_char: list[int], end_b: int) -> int:
    """The character offset just past byte `end_b - 1` (rounding a split character up)."""
    if end_b <= 0:
        return 0
    return byte_to_char[end_b - 1] + 1


MAX_SPAN_TOKENS = 12  # longest answer span scored (a phrase, not a passage)
STARTS_SCORED = 10  # answer starts kept after ranking the first token's log-prob


def decode_spans(
    llm: Any, prompts: Sequence[list[int]], contexts: Sequence[str], max_tokens: int = 48
) -> list[Span]:
    """The most likely span of each context as the complete answer to its prompt.

    Greedy decoding through `SpanConstraint` picks the first token well but then copies the
    context until a sentence ends (asked "How tall is it?", it answered with a whole sentence
    about who built the tower): ending the answer is never the single most likely next token
    while the copy goes on. So spans are ranked as whole answers instead: every token the answer
    may start with (`SpanConstraint.first`) is scored after the prompt, the `STARTS_SCORED` best
    starts are kept, and each span from them up to ``min(max_tokens, MAX_SPAN_TOKENS)`` tokens
    is scored *with the end of the answer appended* (the end-of-turn token of a chat template,
    the newline of a plain prompt), in one batch through `pyllm.scoring`. The span with the
    highest total log-prob wins; an answer that stops mid-phrase pays for its unlikely end.
    """
    from pyllm_tasks import prompts as P

    tok = llm.tokenizer
    ends = sorted(tok.eos_ids) if tok.eos_ids else ([tok.eos_id] if tok.eos_id is not None else [])
    if P.prompt_style(llm) == "chat":
        end = [tok.eos_id if tok.eos_id is not None else ends[0]] if ends else []
    else:
        end = tok.encode("\n", add_bos=False)[-1:]
    longest = max(1, min(max_tokens, MAX_SPAN_TOKENS))
    cons = [SpanConstraint(tok, c, ends) for c in contexts]
    scorer = _scorer(llm)
    starts = [[(t, s, j) for t, places in c.first.items() for s, j in places] for c in cons]
    firsts = scorer.score([(p, [[t] for t, _, _ in st]) for p, st in zip(prompts, starts)])
    requests, spans = [], []
    for p, c, st, sc in zip(prompts, cons, starts, firsts):
        best = sorted(range(len(st)), key=lambda k: -sc[k].logprob)[:STARTS_SCORED]
        conts, places = [], []
        for k in best:
            t, s, j = st[k]
            for n in range(longest):
                if j + n > len(c.ids):
                    break
                conts.append([t, *c.ids[j : j + n], *end])
                places.append((s, j + n, [t, *c.ids[j : j + n]]))
        requests.append((p, conts))
        spans.append(places)
    out = []
    for c, places, scores in zip(cons, spans, scorer.score(requests) if requests else []):
        if not places:
            out.append(Span("", 0, 0, 0.0, []))
            continue
        k = max(range(len(places)), key=lambda i: scores[i].logprob)
        s, j, tokens = places[k]
        c.cands, c.tokens = [(s, j)], tokens
        out.append(c.span(scores[k].logprob - sum(scores[k].token_logprobs[len(tokens) :])))
    return out


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scorer(llm: Any) -> Any:
    """The model's ContinuationScorer (kept: the system prompt stays cached between calls)."""
    scorer = _SCORERS.get(llm)
    if scorer is None:
        from pyllm.scoring import ContinuationScorer

        scorer = _SCORERS[llm] = ContinuationScorer(llm.model)
    return scorer
