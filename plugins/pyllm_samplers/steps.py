"""The built-in sampler steps, in plain PyTorch.

Every step maps float32 logits ``[B, V]`` to logits of the same shape (``-inf`` for removed tokens)
and reads its settings from ``context.params[row]``. The steps the fused kernel also implements
(penalties, logit_bias, top_k, typical_p, top_p, min_p, temperature) follow the exact rules written
in ``pyllm/ops/sampling.py`` — rank order = logit descending then id ascending, weights
``exp(z - max)`` in float64, "the fewest tokens whose mass reaches p" — so a default chain gives the
same tokens step by step as fused. A step leaves a row alone when its setting is off.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyllm.ops.sampling import STREAM_XTC, philox_uniform
from pyllm.sampler import SEED_KEY, penalty_window
from pyllm.types import SamplingContext

NEG_INF = float("-inf")
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------ helpers


def kept_ids(row: torch.Tensor) -> torch.Tensor:
    """Ascending ids of the tokens still in play (finite or +inf logits; NaN counts as removed)."""
    return torch.nonzero(row > NEG_INF).flatten()


def rank_order(values: torch.Tensor) -> torch.Tensor:
    """Positions of `values` by value descending, then position ascending."""
    return torch.sort(values, descending=True, stable=True).indices


def keep_only(row: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(row, NEG_INF)
    out[ids] = row[ids]
    return out


def best_id(row: torch.Tensor) -> int:
    """The first id of the largest logit (NaN ignored)."""
    return int(torch.argmax(torch.nan_to_num(row, nan=NEG_INF)))


def weights(row: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """exp(z - max z) over `ids`, in float64."""
    z = row[ids].double()
    return torch.exp(z - z.max())


def fewest_reaching(w_in_order: torch.Tensor, target: float) -> int:
    """How many leading entries it takes for the cumulative sum to reach `target` (at least 1)."""
    cum = torch.cumsum(w_in_order, 0)
    return min(int((cum < target).sum()) + 1, w_in_order.numel())


def position(context: SamplingContext, b: int) -> int:
    return len(context.prompt_ids[b]) + len(context.output_ids[b])


# ------------------------------------------------------------------------------ the steps


class Greedy:
    """Keep only the most likely token (ties to the lowest id)."""

    name = "greedy"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b in range(logits.shape[0]):
            logits[b] = keep_only(
                logits[b], torch.tensor([best_id(logits[b])], device=logits.device)
            )
        return logits


class Temperature:
    """Divide the logits by the temperature; temperature 0 keeps only the most likely token."""

    name = "temperature"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            if p.temperature == 0.0:
                logits[b] = keep_only(
                    logits[b], torch.tensor([best_id(logits[b])], device=logits.device)
                )
            elif p.temperature != 1.0:
                logits[b] = logits[b] / torch.tensor(p.temperature, dtype=torch.float32)
        return logits


class TopK:
    """Keep the k most likely tokens (ties at the boundary go to the lower ids)."""

    name = "top_k"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            row = logits[b]
            ids = kept_ids(row)
            if 0 < p.top_k < ids.numel():
                logits[b] = keep_only(row, ids[rank_order(row[ids])[: p.top_k]])
        return logits


class TopP:
    """Nucleus sampling (Holtzman et al. 2019): the fewest most likely tokens whose probability
    mass reaches top_p."""

    name = "top_p"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            row = logits[b]
            ids = kept_ids(row)
            if p.top_p < 1.0 and ids.numel() > 1:
                w = weights(row, ids)
                order = rank_order(row[ids])
                keep = fewest_reaching(w[order], p.top_p * float(w.sum()))
                logits[b] = keep_only(row, ids[order[:keep]])
        return logits


class MinP:
    """Keep the tokens whose probability is at least min_p times the top token's."""

    name = "min_p"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            row = logits[b]
            ids = kept_ids(row)
            if p.min_p > 0.0 and ids.numel() > 1:
                logits[b] = keep_only(row, ids[weights(row, ids) >= p.min_p])
        return logits


class TypicalP:
    """Locally typical sampling (Meister et al. 2022): keep the fewest tokens, ordered by how far
    their surprise is from the distribution's entropy, whose mass reaches typical_p."""

    name = "typical_p"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            row = logits[b]
            ids = kept_ids(row)
            if p.typical_p < 1.0 and ids.numel() > 1:
                z = row[ids].double()
                d = z.max() - z  # surprise minus log(sum w): the log(sum w) cancels in the score
                w = torch.exp(-d)
                total = w.sum()
                score = (d - (w * d).sum() / total).abs().float()
                order = torch.sort(score, stable=True).indices
                keep = fewest_reaching(w[order], p.typical_p * float(total))
                logits[b] = keep_only(row, ids[order[:keep]])
        return logits


class Penalties:
    """Repetition (CTRL, Keskar et al. 2019), frequency and presence (OpenAI) penalties over the
    last penalty_last_n tokens of prompt and output."""

    name = "penalties"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        V = logits.shape[1]
        for b, p in enumerate(context.params):
            rep, freq, pres = p.repetition_penalty, p.frequency_penalty, p.presence_penalty
            if rep == 1.0 and freq == 0.0 and pres == 0.0:
                continue
            window = [
                t
                for t in penalty_window(p, context.prompt_ids[b], context.output_ids[b])
                if 0 <= t < V
            ]
            if not window:
                continue
            counts = torch.bincount(torch.tensor(window, device=logits.device), minlength=V).to(
                torch.float32
            )
            seen = counts > 0
            z = logits[b]
            if rep != 1.0:
                r = torch.tensor(rep, dtype=torch.float32)
                z = torch.where(seen, torch.where(z > 0, z / r, z * r), z)
            sub = counts * torch.tensor(freq, dtype=torch.float32) + torch.tensor(
                pres, dtype=torch.float32
            )
            logits[b] = torch.where(seen, z - sub, z)
        return logits


class LogitBias:
    """Add SamplingParams.logit_bias to the logits (-inf bans a token)."""

    name = "logit_bias"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        V = logits.shape[1]
        for b, p in enumerate(context.params):
            if p.logit_bias:
                items = [(t, v) for t, v in p.logit_bias.items() if t < V]
                if items:
                    ids = torch.tensor([t for t, _ in items], device=logits.device)
                    vals = torch.tensor(
                        [v for _, v in items], dtype=torch.float32, device=logits.device
                    )
                    logits[b].index_put_((ids,), vals, accumulate=True)
        return logits


class MirostatV2:
    """Mirostat 2.0 (Basu et al. 2021, Algorithm 2): keep the tokens whose surprise -log2(p) is at
    most mu, then move mu toward the target surprise tau: mu -= eta * (observed surprise - tau).

    mu starts at 2 tau and lives in the row's state. The observed surprise is that of the token
    drawn, under the truncated, renormalized distribution; since a step runs before the draw, the
    update for the token drawn after one call happens at the next call (which sees it as the last
    output token). Put mirostat_v2 last in a chain (after temperature if any).
    """

    name = "mirostat_v2"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            state = context.state[b].setdefault("mirostat_v2", {"mu": 2.0 * p.mirostat_tau})
            out = context.output_ids[b]
            pending = state.pop("pending", None)
            if pending is not None and len(out) == pending[0] + 1:
                surprise = pending[1].get(int(out[-1]))
                if surprise is not None:
                    state["mu"] -= p.mirostat_eta * (surprise - p.mirostat_tau)
            row = logits[b]
            ids = kept_ids(row)
            if ids.numel() == 0:
                continue
            surprise = -torch.log_softmax(row[ids].double(), 0) / LN2
            keep = surprise <= state["mu"]
            keep[torch.argmin(surprise)] = True  # at least the most likely token
            kept = ids[keep]
            renormalized = -torch.log_softmax(row[kept].double(), 0) / LN2
            state["pending"] = (len(out), dict(zip(kept.tolist(), renormalized.tolist())))
            logits[b] = keep_only(row, kept)
        return logits


class Dry:
    """DRY, "Don't Repeat Yourself" (p-e-w, text-generation-webui #5677, also in llama.cpp).

    For each earlier occurrence of the last token, count how many tokens before it match the tokens
    before the end of the context (n); the token that followed that occurrence would extend a
    repetition of length n. If n >= dry_allowed_length its logit loses
    dry_multiplier * dry_base ** (n - dry_allowed_length) (the largest n per token counts).
    Sequence breakers stop a match: a token whose text contains one of dry_sequence_breakers ends
    the matching, is never penalized, and as the last token disables DRY for the step. Breakers
    need the tokenizer (``context.tokenizer``, set by pyllm.sampler.Sampler); without one there
    are none. Looks at the last dry_penalty_last_n tokens (-1 = all, 0 = off).
    """

    name = "dry"

    def __init__(self) -> None:
        self._breakers: dict[tuple[int, tuple[str, ...]], frozenset[int]] = {}

    def breaker_ids(self, tokenizer: Any, breakers: tuple[str, ...]) -> frozenset[int]:
        if tokenizer is None or not breakers:
            return frozenset()
        key = (id(tokenizer), breakers)
        if key not in self._breakers:
            found = set()
            for i in range(tokenizer.vocab_size):
                text = tokenizer.token_bytes(i).decode("utf-8", errors="replace")
                if any(s in text for s in breakers):
                    found.add(i)
            self._breakers[key] = frozenset(found)
        return self._breakers[key]

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        V = logits.shape[1]
        tokenizer = getattr(context, "tokenizer", None)
        for b, p in enumerate(context.params):
            if p.dry_multiplier == 0.0 or p.dry_penalty_last_n == 0:
                continue
            tokens = list(context.prompt_ids[b]) + list(context.output_ids[b])
            if p.dry_penalty_last_n > 0:
                tokens = tokens[-p.dry_penalty_last_n :]
            penalties = dry_penalties(
                tokens,
                self.breaker_ids(tokenizer, p.dry_sequence_breakers),
                p.dry_multiplier,
                p.dry_base,
                p.dry_allowed_length,
            )
            items = [(t, v) for t, v in penalties.items() if 0 <= t < V]
            if items:
                ids = torch.tensor([t for t, _ in items], device=logits.device)
                logits[b, ids] -= torch.tensor(
                    [v for _, v in items], dtype=torch.float32, device=logits.device
                )
        return logits


def dry_penalties(
    tokens: list[int], breakers: frozenset[int], multiplier: float, base: float, allowed_length: int
) -> dict[int, float]:
    """{token: penalty} for DRY on one context (see :class:`Dry`)."""
    if len(tokens) < 2 or tokens[-1] in breakers:
        return {}
    last = tokens[-1]
    longest: dict[int, int] = {}
    end = len(tokens) - 1
    for i in range(end):
        if tokens[i] != last:
            continue
        nxt = tokens[i + 1]
        if nxt in breakers:
            continue
        n = 1
        while i - n >= 0 and tokens[i - n] == tokens[end - n] and tokens[i - n] not in breakers:
            n += 1
        longest[nxt] = max(longest.get(nxt, 0), n)
    out = {}
    for token, n in longest.items():
        if n >= allowed_length:
            try:
                out[token] = min(multiplier * base ** (n - allowed_length), 3.0e38)
            except OverflowError:
                out[token] = 3.0e38
    return out


class Xtc:
    """XTC, "Exclude Top Choices" (p-e-w, text-generation-webui #6335, also in llama.cpp): with
    probability xtc_probability, remove every token whose probability is at least xtc_threshold
    except the least likely of them (nothing happens unless two or more reach the threshold).

    The coin comes from the request's Philox stream (seed, position, stream 1), so a seeded
    request is reproducible.
    """

    name = "xtc"

    def __call__(self, logits: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        for b, p in enumerate(context.params):
            if p.xtc_probability == 0.0 or p.xtc_threshold > 0.5:
                continue
            seed = p.seed if p.seed is not None else int(context.state[b].get(SEED_KEY, 0))
            if philox_uniform(seed, position(context, b), STREAM_XTC) >= p.xtc_probability:
                continue
            row = logits[b]
            ids = kept_ids(row)
            w = weights(row, ids)
            above = torch.nonzero(w / w.sum() >= p.xtc_threshold).flatten()
            if above.numel() < 2:
                continue
            order = rank_order(row[ids[above]])
            removed = ids[above[order[:-1]]]  # all but the last (least likely) in rank order
            logits[b, removed] = NEG_INF
        return logits
