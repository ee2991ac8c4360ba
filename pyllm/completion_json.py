"""Completions as JSON-ready dicts, the same shape wherever pyllm prints or writes them
(`pyllm run --json`, `pyllm generate`'s output records)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def logprobs_json(logprobs: Sequence[Any], tokenizer: Any = None) -> list[dict[str, Any]]:
    """Per generated token: {"token_id", "logprob", "top": [{"token_id", "logprob"}, ...]};
    with a tokenizer each entry also has "token", the token's text."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        out: dict[str, Any] = {"token_id": token_id, "logprob": logprob}
        if tokenizer is not None:
            out["token"] = tokenizer.decode([token_id])
        return out

    return [
        {**entry(t.token_id, t.logprob), "top": [entry(i, lp) for i, lp in t.top]} for t in logprobs
    ]


def completion_json(completion: Any, tokenizer: Any = None) -> dict[str, Any]:
    """{"text", "token_ids", "finish_reason"}, and "logprobs" when they were asked for."""
    out: dict[str, Any] = {
        "text": completion.text,
        "token_ids": completion.token_ids,
        "finish_reason": completion.finish_reason,
    }
    if completion.logprobs is not None:
        out["logprobs"] = logprobs_json(completion.logprobs, tokenizer)
    if getattr(completion, "incomplete", False):  # structured output cut before it was complete
        out["incomplete"] = True
    return out
