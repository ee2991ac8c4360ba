"""The reference generation loop: the plainest correct way to generate, which the engine is
tested against (tests/test_engine.py, tests/test_api_params.py compare their completions token
for token), plus the pieces the engine shares with it (the result types, `sample`).

Sequences run in groups (up to `max_batch` at a time) on one contiguous KV-cache: one flattened
forward prefills every prompt of the group, then each step decodes one token for every sequence
still running; a sequence that finishes leaves the batch. Stop conditions: EOS (the tokenizer's
end-of-generation ids, unless `ignore_eos`), `stop_token_ids`, stop strings (cut from the text,
never shown), `max_tokens`, and the context length (finish reason "length"). No scheduler, no
paged blocks, no prefix cache: whatever the engine (pyllm/engine/, continuous batching) does
with those must come to the same tokens as this loop. `pyllm.LLM` generates through the engine;
from here it uses `score_ids` and the result types.

The functions are small and pure in the gpt-fast manner: `prefill`, `decode_step`, `sample`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pyllm.engine.detokenize import IncrementalDetokenizer
from pyllm.engine.stops import StopStringChecker
from pyllm.model.batch import ContiguousKVCache
from pyllm.sampler import Sampler, SampleResult
from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.runtime import ModelRunner
    from pyllm.types import Tokenizer


# ---------------------------------------------------------------------- results


@dataclass
class TokenLogprob:
    """One token with its log-probability under the model and the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), best first


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length"
    logprobs: list[TokenLogprob] | None = None
    # Structured output: True when the request had a constraint and the output ended before
    # satisfying it (cut by max_tokens, the context or a stop string): it will not parse.
    incomplete: bool = False


@dataclass
class GenerationResult:
    """One prompt's result: `outputs` holds its `n` completions; `text`, `token_ids`,
    `finish_reason` and `logprobs` are the first one's."""

    prompt_token_ids: list[int]
    outputs: list[Completion]

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.outputs[0].logprobs


@dataclass
class StreamEvent:
    """Something happened to completion `output` of request `request`: new text `delta`
    (possibly ""), and `finished` once it is done (then `completion` is final)."""

    request: Hashable  # the request id (an int in this loop; any hashable in the engine)
    output: int
    delta: str
    finished: bool
    completion: Completion


# ---------------------------------------------------------------------- sequences


class _Seq:
    def __init__(
        self,
        request: int,
        output: int,
        prompt: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        slot: int,
    ) -> None:
        self.request, self.output, self.prompt, self.params = request, output, prompt, params
        self.slot = slot  # its index in the group's KV cache
        self.out: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.detok = IncrementalDetokenizer(tokenizer, skip_special=True)
        self.stops = StopStringChecker(params.stop)
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else frozenset(tokenizer.eos_ids)
        )
        self.finish_reason: str | None = None
        self.cached = 0  # tokens whose K/V are in the cache
        self.state: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        return Completion(self.stops.text, list(self.out), self.finish_reason, self.logprobs)


# ---------------------------------------------------------------------- sampling


def sample(
    logits: torch.Tensor,
    seqs: Sequence[Any],
    sampler: Sampler | None = None,
    token_mask: torch.Tensor | None = None,
) -> tuple[list[int], list[TokenLogprob]]:
    """Pick one token per row of `logits` [B, V] (float32) through the sampler chain of each
    row's SamplingParams; returns the ids and their log-probs under the model's distribution
    (with the top alternatives when a sequence asked for them).

    A sequence is anything with `params`, `prompt`, `out` (ids so far), `stop_ids` and `state`
    (a dict kept for the request's life): this loop's `_Seq` and the engine's `Sequence`.
    Before `min_tokens` tokens exist, the sequence's ending ids are masked out. `token_mask`
    (int32 [B, ceil(V/32)], structured output) allows only the tokens whose bit is set.
    """
    for row, s in enumerate(seqs):
        if len(s.out) < s.params.min_tokens and s.stop_ids:
            logits[row, list(s.stop_ids)] = float("-inf")
    sampler = sampler or _default_sampler()
    res = sampler.sample(
        logits,
        [s.params for s in seqs],
        [s.prompt for s in seqs],
        [s.out for s in seqs],
        [s.state for s in seqs],
        token_mask=token_mask,
    )
    return sampled_tokens(res, seqs)


def sampled_tokens(res: SampleResult, seqs: Sequence[Any]) -> tuple[list[int], list[TokenLogprob]]:
    """The ids of a SampleResult and their TokenLogprob (with as many top alternatives as each
    sequence asked for)."""
    ids = res.token_ids.tolist()
    chosen = res.logprobs.tolist()
    top_ids = res.top_ids.tolist() if res.top_ids is not None else None
    top_lps = res.top_logprobs.tolist() if res.top_logprobs is not None else None
    out = []
    for row, s in enumerate(seqs):
        k = s.params.logprobs or 0
        top = (
            []
            if not k or top_ids is None or top_lps is None
            else list(zip(top_ids[row][:k], top_lps[row][:k]))
        )
        out.append(TokenLogprob(ids[row], chosen[row], top))
    return ids, out


_SAMPLER: Sampler | None = None


def _default_sampler() -> Sampler:
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = Sampler()
    return _SAMPLER


# ---------------------------------------------------------------------- the loop


def generate_stream(
    model: ModelRunner,
    tokenizer: Tokenizer,
    prompts: Sequence[list[int]],
    params: Sequence[SamplingParams],
    *,
    max_batch: int = 16,
) -> Iterator[StreamEvent]:
    """Generate for every prompt (already tokenized and within the context length), yielding
    a StreamEvent whenever a completion's visible text grows or it finishes."""
    seqs = [(r, j) for r, p in enumerate(params) for j in range(p.n)]
    for start in range(0, len(seqs), max_batch):
        group = seqs[start : start + max_batch]
        yield from _run_group(model, tokenizer, prompts, params, group)


def _run_group(
    model: ModelRunner,
    tokenizer: Tokenizer,
    prompts: Sequence[list[int]],
    params: Sequence[SamplingParams],
    group: list[tuple[int, int]],
) -> Iterator[StreamEvent]:
    cfg = model.config
    limit = cfg.max_position
    seqs = []
    for slot, (r, j) in enumerate(group):
        p = params[r]
        if p.n > 1 and p.seed is not None:
            p = p.replace(seed=(p.seed + j) % 2**64)  # n different draws, still reproducible
        seqs.append(_Seq(r, j, list(prompts[r]), p, tokenizer, slot))
    # Each sequence needs room for its prompt and every token it may feed back (the last
    # sampled token is never fed), within the context length.
    need = max(min(len(s.prompt) + s.params.max_tokens - 1, limit) for s in seqs)
    cache = ContiguousKVCache(
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim, len(seqs), max(need, 1), device=model.device
    )
    sampler = Sampler(tokenizer=tokenizer)
    with torch.inference_mode():
        logits = prefill(model, cache, seqs)  # (B, V)
        running = seqs
        while running:
            ids, lps = sample(logits, running, sampler)
            for s, tok, lp in zip(running, ids, lps):
                delta = _append(s, tok, lp, limit)
                if delta or s.done:
                    yield StreamEvent(s.request, s.output, delta, s.done, s.completion())
            running = [s for s in running if not s.done]
            if running:
                logits = decode_step(model, cache, running)


def prefill(model: ModelRunner, cache: ContiguousKVCache, seqs: Sequence[_Seq]) -> torch.Tensor:
    """Run every prompt through the model at once; logits [B, V] at each prompt's last token."""
    ids = torch.tensor([t for s in seqs for t in s.prompt], dtype=torch.int64)
    meta = cache.metadata([s.slot for s in seqs], [0] * len(seqs), [len(s.prompt) for s in seqs])
    logits = model(ids.to(model.device), meta, cache.kv_caches, meta.last_token_rows())
    for s in seqs:
        s.cached = len(s.prompt)
    return logits.float()


def decode_step(model: ModelRunner, cache: ContiguousKVCache, seqs: Sequence[_Seq]) -> torch.Tensor:
    """Feed each sequence's last sampled token; logits [B, V] for the next one."""
    ids = torch.tensor([s.out[-1] for s in seqs], dtype=torch.int64)
    meta = cache.metadata([s.slot for s in seqs], [s.cached for s in seqs], [1] * len(seqs))
    logits = model(ids.to(model.device), meta, cache.kv_caches)
    for s in seqs:
        s.cached += 1
    return logits.float()


def _append(s: _Seq, tok: int, lp: TokenLogprob, limit: int) -> str:
    """Record a sampled token; returns the newly visible text; sets finish_reason when done."""
    s.out.append(tok)
    if s.logprobs is not None:
        s.logprobs.append(lp)
    delta = ""
    if tok in s.stop_ids:
        s.finish_reason = "stop"
    else:
        delta = s.stops.add(s.detok.add(tok))
        if s.stops.stopped:
            s.finish_reason = "stop"
        elif len(s.out) >= s.params.max_tokens or len(s.prompt) + len(s.out) >= limit + 1:
            s.finish_reason = "length"
    if s.done and not s.stops.stopped:
        delta += s.stops.add(s.detok.flush()) + s.stops.flush()
    return delta


# ---------------------------------------------------------------------- scoring


@dataclass
class ScoredToken:
    """Token `token_id` at `position`, its log-prob given the tokens before it (None for the
    first token, which nothing predicts), and the model's top alternatives there."""

    position: int
    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] = field(default_factory=list)


def score_ids(
    model: ModelRunner, ids: Sequence[int], top_n: int = 10, chunk: int = 256
) -> list[ScoredToken]:
    """Teacher-forced log-probs of `ids` (one sequence within the context length).

    The logits are computed `chunk` rows at a time, so a long text never holds a [T, V] matrix.
    """
    cfg = model.config
    cache = ContiguousKVCache(
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, max(len(ids), 1), device=model.device
    )
    out = [ScoredToken(0, int(ids[0]), None)] if ids else []
    if len(ids) < 2:
        return out
    with torch.inference_mode():
        x = torch.tensor(list(ids), dtype=torch.int64, device=model.device)
        hidden = model.hidden_states(x, cache.metadata([0], [0], [len(ids)]), cache.kv_caches)
        for lo in range(0, len(ids) - 1, chunk):
            hi = min(lo + chunk, len(ids) - 1)
            logp = torch.log_softmax(model.logits(hidden[lo:hi]).float(), dim=-1)  # (R, V)
            targets = x[lo + 1 : hi + 1]
            chosen = logp.gather(1, targets[:, None])[:, 0].tolist()
            top_lp, top_ids = logp.topk(top_n, dim=-1) if top_n else (None, None)
            for r in range(hi - lo):
                top = (
                    []
                    if top_ids is None or top_lp is None  # top_n == 0
                    else list(zip(top_ids[r].tolist(), top_lp[r].tolist()))
                )
                out.append(ScoredToken(lo + r + 1, int(targets[r]), chosen[r], top))
    return out
