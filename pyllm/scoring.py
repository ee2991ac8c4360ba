"""Log-likelihood of continuations: how likely the model finds each of several endings of a prompt.

This is what classification by label scoring needs: one prompt, a handful of candidate
continuations (the labels), and for each the sum of its tokens' log-probabilities given the
prompt and the tokens before them. The prompt is prefilled once and shared through the paged
KV-cache:

1. the prompt gets blocks from a :class:`~pyllm.engine.block_manager.BlockManager` and is
   prefilled (only the part not already cached: prompts that start alike, such as few-shot
   examples, share their leading blocks across calls);
2. each continuation forks the prompt's sequence (sharing every block) and appends its tokens,
   which gives it a private copy of the prompt's last, partial block (copy-on-write);
3. one flattened forward runs every continuation's tokens at once, with logits at every
   continuation position. The prompt's last-row logits predict each continuation's first token.

Many prompts go through the same two forwards at once (:meth:`ContinuationScorer.score`), in
batches bounded by a token budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pyllm.engine.block_manager import BlockManager
from pyllm.errors import ContextLengthError
from pyllm.model.batch import KVCaches, allocate_kv_caches, build_metadata

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.runtime import ModelRunner

__all__ = ["ContinuationScore", "ContinuationScorer", "score_continuations"]


@dataclass
class ContinuationScore:
    """One continuation's log-likelihood given the prompt."""

    logprob: float  # sum of the token log-probs (natural log)
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean(self) -> float:
        """Mean log-prob per token (the length-normalised score)."""
        return self.logprob / max(self.num_tokens, 1)


class ContinuationScorer:
    """Scores continuations of prompts on one model, keeping a KV-cache between calls so that
    prompts sharing a prefix (a system prompt, few-shot examples) compute it once.

    :param cache_tokens: KV-cache size in tokens (grown when one request needs more).
    :param max_batch_tokens: roughly how many tokens one forward pass may hold.
    """

    def __init__(
        self,
        model: ModelRunner,
        *,
        block_size: int = 16,
        cache_tokens: int = 4096,
        max_batch_tokens: int = 1024,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.max_batch_tokens = max_batch_tokens
        self._ids = itertools.count()
        self._make_cache(max(cache_tokens, block_size))
        self.stats = {"prompt_tokens": 0, "computed_prompt_tokens": 0, "continuation_tokens": 0}

    def _make_cache(self, tokens: int) -> None:
        cfg = self.model.config
        self.num_blocks = -(-tokens // self.block_size)
        dtype = torch.float32
        self.blocks = BlockManager(self.num_blocks, self.block_size)
        self.kv_caches: KVCaches = allocate_kv_caches(
            cfg.n_layer,
            self.blocks.pool_blocks,
            self.block_size,
            cfg.n_kv_head,
            cfg.head_dim,
            dtype,
            self.model.device,
        )

    def _blocks_needed(self, prompt: Sequence[int], conts: Sequence[Sequence[int]]) -> int:
        """Worst case: every prompt block, plus per continuation a copy of the partial block and
        blocks for its tokens."""
        bs = self.block_size
        n = -(-len(prompt) // bs)
        return n + sum(1 + -(-len(c) // bs) for c in conts)

    # ---------------------------------------------------------------- public

    def score(
        self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
    ) -> list[list[ContinuationScore]]:
        """For each `(prompt_ids, [continuation_ids, ...])`: a ContinuationScore per
        continuation, in order. Raises ContextLengthError when a prompt plus its longest
        continuation exceeds the model's context, ValueError for an empty prompt or
        continuation."""
        limit = self.model.config.max_position
        for prompt, conts in requests:
            if not prompt:
                raise ValueError("the prompt is empty (0 tokens)")
            if not conts:
                raise ValueError("no continuations to score")
            if any(len(c) == 0 for c in conts):
                raise ValueError("a continuation is empty (0 tokens)")
            longest = len(prompt) + max(len(c) for c in conts)
            if longest > limit:
                raise ContextLengthError(
                    f"the prompt ({len(prompt)} tokens) and its longest "
                    f"continuation need {longest} tokens, more than the "
                    f"context length of {limit}"
                )
        out: list[list[ContinuationScore]] = []
        for group in self._batches(requests):
            out.extend(self._score_batch(group))
        return out

    # ---------------------------------------------------------------- internals

    def _batches(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]):
        """Consecutive groups within the token budget and the cache (growing the cache when a
        single request needs more than it holds)."""
        group: list = []
        tokens = blocks = 0
        for prompt, conts in requests:
            t = len(prompt) + sum(len(c) for c in conts)
            b = self._blocks_needed(prompt, conts)
            if group and (tokens + t > self.max_batch_tokens or blocks + b > self.num_blocks):
                yield group
                group, tokens, blocks = [], 0, 0
            if b > self.num_blocks:  # (the new cache starts with an empty prefix cache)
                self._make_cache(max(b, 2 * self.num_blocks) * self.block_size)
            group.append((list(prompt), [list(c) for c in conts]))
            tokens += t
            blocks += b
        if group:
            yield group

    def _forward(
        self,
        ids: list[int],
        seqs: list,
        cached: list[int],
        new: list[int],
        rows: torch.Tensor | None,
    ) -> torch.Tensor | None:
        device = self.model.device
        meta = build_metadata(
            cached, new, [self.blocks.block_table(s) for s in seqs], self.block_size, device
        )
        x = torch.tensor(ids, dtype=torch.int64, device=device)
        if rows is None:
            self.model.hidden_states(x, meta, self.kv_caches)
            return None
        return self.model(x, meta, self.kv_caches, rows.to(device))

    def _warm_common_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the full blocks the batch's prompts all start with, once, so that each
        prompt's allocation finds them cached instead of computing them side by side."""
        if len(prompts) < 2:
            return
        common = 0
        shortest = min(len(p) for p in prompts)
        first = prompts[0]
        while common < shortest and all(p[common] == first[common] for p in prompts):
            common += 1
        common = min(common, shortest - 1) // self.block_size * self.block_size
        if common == 0:
            return
        sid = ("prefix", next(self._ids))
        cached = self.blocks.allocate(sid, first[: common + 1])
        try:
            if cached < common:
                self._forward(first[cached:common], [sid], [cached], [common - cached], None)
                self.stats["computed_prompt_tokens"] += common - cached
                self.blocks.mark_computed(sid, common)
        finally:
            self.blocks.free(sid)

    @torch.inference_mode()
    def _score_batch(
        self, group: list[tuple[list[int], list[list[int]]]]
    ) -> list[list[ContinuationScore]]:
        bm = self.blocks
        self._warm_common_prefix([p for p, _ in group])
        pids = [("p", next(self._ids)) for _ in group]
        cids: list[list] = []
        try:
            # 1. prefill what is not cached of every prompt; logits at each last prompt token
            cached = [bm.allocate(sid, p) for sid, (p, _) in zip(pids, group)]
            new = [len(p) - c for (p, _), c in zip(group, cached)]
            ids = [t for (p, _), c in zip(group, cached) for t in p[c:]]
            last_rows = torch.tensor(list(itertools.accumulate(new)), dtype=torch.int64) - 1
            first_logits = self._forward(ids, pids, cached, new, last_rows)  # (B, V)
            assert first_logits is not None  # rows were asked for: logits come back
            for sid, (p, _) in zip(pids, group):
                bm.mark_computed(sid, len(p))
            self.stats["prompt_tokens"] += sum(len(p) for p, _ in group)
            self.stats["computed_prompt_tokens"] += len(ids)

            # 2. fork one sequence per continuation; append its tokens (copy-on-write)
            seqs, c_cached, c_new = [], [], []
            c_ids: list[int] = []  # every continuation's tokens, one after another
            rows: list[int] = []
            copies: list[tuple[int, int]] = []
            for sid, (p, conts) in zip(pids, group):
                mine = []
                for cont in conts:
                    cid = ("c", next(self._ids))
                    bm.fork(sid, cid)
                    mine.append(cid)
                    copies += bm.append(cid, cont)
                    # rows predicting cont[1:], i.e. every continuation token but the last
                    rows.extend(range(len(c_ids), len(c_ids) + len(cont) - 1))
                    seqs.append(cid)
                    c_cached.append(len(p))
                    c_new.append(len(cont))
                    c_ids.extend(cont)
                cids.append(mine)
            for src, dst in copies:  # the shared partial block, copied before it is written
                for k_cache, v_cache in self.kv_caches:
                    k_cache[dst].copy_(k_cache[src])
                    v_cache[dst].copy_(v_cache[src])
            later = (
                self._forward(c_ids, seqs, c_cached, c_new, torch.tensor(rows, dtype=torch.int64))
                if rows
                else None
            )
            self.stats["continuation_tokens"] += len(c_ids)

            # 3. gather each continuation token's log-prob
            first_lp = torch.log_softmax(first_logits.float(), dim=-1)  # (B, V)
            later_lp = None if later is None else torch.log_softmax(later.float(), dim=-1)
            out: list[list[ContinuationScore]] = []
            r = 0
            for b, (_, conts) in enumerate(group):
                res = []
                for cont in conts:
                    lps = [float(first_lp[b, cont[0]])]
                    if len(cont) > 1:
                        idx = torch.arange(r, r + len(cont) - 1)
                        tok = torch.tensor(cont[1:], dtype=torch.int64)
                        assert later_lp is not None  # computed: this continuation had rows
                        lps += later_lp[idx, tok].tolist()
                        r += len(cont) - 1
                    res.append(ContinuationScore(sum(lps), lps))
                out.append(res)
            return out
        finally:
            for mine in cids:
                for cid in mine:
                    bm.free(cid)
            for sid in pids:
                bm.free(sid)  # the prompt's blocks stay cached for later calls


def score_continuations(
    model: ModelRunner, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[ContinuationScore]:
    """One prompt, several continuations: each continuation's summed (and mean) token log-prob
    given the prompt, the prompt prefilled once (see the module docstring)."""
    need = len(prompt_ids) + sum(len(c) + 16 for c in continuations) + 16
    scorer = ContinuationScorer(model, cache_tokens=need, max_batch_tokens=max(need, 1024))
    return scorer.score([(prompt_ids, continuations)])[0]
