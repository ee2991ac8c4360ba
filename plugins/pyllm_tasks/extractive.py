"""Constrained decoding: the answer must be a span of the context, token for token.

The context is tokenized on its own; its tokens' byte offsets are known from `token_bytes`. While
decoding, the set of *candidates* holds every place in the context that the answer so far
matches: (start byte, index of the next context token). At each step only the tokens that
continue some candidate are allowed, plus the end of the answer once it is non-empty. The first
token may also be a context token without its leading space ("Paris" for the context's
" Paris"), since an answer starts a turn and rarely with a space. When the answer ends, the
earliest candidate gives the span's character offsets.

`decode_spans` runs greedy decoding for a batch of prompts at once (one flattened prefill, then
one token per sequence a step) on the model directly, masking the logits per row.
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
                    (self.starts[i] + len(p) - len(bare), i + 1))
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
            self.cands = [(s, j + 1) for s, j in self.cands
                          if j < len(self.ids) and self.ids[j] == token]
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


def decode_spans(llm: Any, prompts: Sequence[list[int]], contexts: Sequence[str],
                 max_tokens: int = 48) -> list[Span]:
    """Greedy, span-constrained answers for a batch of prompts (one context each)."""
    import torch

    from pyllm.model.batch import ContiguousKVCache

    model, tok = llm.model, llm.tokenizer
    cfg = model.config
    end_ids = sorted(tok.eos_ids) if tok.eos_ids else ([tok.eos_id] if tok.eos_id is not None
                                                        else [])
    cons = [SpanConstraint(tok, c, end_ids) for c in contexts]
    limit = cfg.max_position
    for p in prompts:
        if len(p) + 1 > limit:
            from pyllm.errors import ContextLengthError

            raise ContextLengthError(f"the prompt has {len(p)} tokens, more than the context "
                                     f"length of {limit} allows")
    need = min(max(len(p) for p in prompts) + max_tokens, limit)
    cache = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, len(prompts), need,
                              device=model.device)
    logps = [0.0] * len(prompts)
    cached = [len(p) for p in prompts]
    running = list(range(len(prompts)))
    with torch.inference_mode():
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int64, device=model.device)
        meta = cache.metadata(running, [0] * len(prompts), cached)
        logits = model(ids, meta, cache.kv_caches, meta.last_token_rows()).float()  # (B, V)
        for _ in range(max_tokens):
            lp = torch.log_softmax(logits, dim=-1)
            still, fed = [], []
            for row, b in enumerate(running):
                allowed = cons[b].allowed()
                if not allowed:
                    continue
                allowed_t = torch.tensor(allowed, dtype=torch.int64, device=lp.device)
                choice = int(allowed_t[lp[row, allowed_t].argmax()])
                if cons[b].advance(choice):
                    if choice not in end_ids:
                        logps[b] += float(lp[row, choice])
                    continue
                logps[b] += float(lp[row, choice])
                still.append(b)
                fed.append(choice)
            room = min(cache.capacity, limit)
            running = [b for b in still if cached[b] < room]  # the rest end where they are
            fed = [f for b, f in zip(still, fed) if cached[b] < room]
            if not running:
                break
            meta = cache.metadata(running, [cached[b] for b in running], [1] * len(running))
            x = torch.tensor(fed, dtype=torch.int64, device=model.device)
            logits = model(x, meta, cache.kv_caches).float()
            for b in running:
                cached[b] += 1
    return [c.span(lp) for c, lp in zip(cons, logps)]
