"""One sequence being generated: its tokens, how many are in the KV cache, and when it stops."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from pyllm.engine.detokenize import IncrementalDetokenizer
from pyllm.engine.stops import StopStringChecker
from pyllm.generation import Completion, TokenLogprob
from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Tokenizer


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A prompt plus the tokens generated so far.

    `cached` counts the leading tokens whose K/V are in the cache; the scheduler runs the rest
    (a prefill chunk, or the one token sampled last step). After preemption `cached` drops to 0
    and the whole sequence — prompt and output — is recomputed when it is admitted again.
    """

    def __init__(
        self,
        seq_id: int,
        request_id: Hashable,
        index: int,
        prompt: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        context_length: int,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index  # which of the request's n completions
        self.prompt = prompt
        self.params = params
        self.context_length = context_length
        self.out: list[int] = []
        self.cached = 0
        self.status = SeqStatus.WAITING
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.state: dict[str, Any] = {}  # per-sequence sampler state (mirostat's mu, ...)
        self.children: list[Sequence] = []  # n > 1: siblings forked once the prompt is cached
        # Structured output: this sequence's pyllm.constraints.ConstraintMatcher, or None.
        self.constraint: Any = None
        self.detok = IncrementalDetokenizer(tokenizer, skip_special=True)
        self.stops = StopStringChecker(params.stop)
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else frozenset(tokenizer.eos_ids)
        )

    # ------------------------------------------------------------------ views

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.out)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        incomplete = (
            self.constraint is not None
            and self.done
            and (self.constraint.failed or not self.constraint.accepting)
        )
        return Completion(
            self.stops.text, list(self.out), self.finish_reason, self.logprobs, incomplete
        )

    # ------------------------------------------------------------------ growth

    def append(self, token: int, logprob: TokenLogprob, constraint_done: bool = False) -> str:
        """Record a sampled token; returns the newly visible text and sets `finish_reason`
        when a stop condition is met (EOS / stop ids, stop strings, max tokens, context, or
        ``constraint_done``: the structured-output constraint is complete with this token)."""
        self.out.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        delta = ""
        if token in self.stop_ids:  # (the sampler masks them until min_tokens)
            self.finish_reason = "stop"
        else:
            delta = self.stops.add(self.detok.add(token))
            if self.stops.stopped or constraint_done:
                self.finish_reason = "stop"
            elif len(self.out) >= self.params.max_tokens or self.num_tokens > self.context_length:
                self.finish_reason = "length"
        if self.done and not self.stops.stopped:
            delta += self.stops.add(self.detok.flush()) + self.stops.flush()
        return delta
