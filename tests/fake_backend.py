"""A deterministic chat backend for the REPL's tests: words are tokens, and the reply repeats
the last user message (:func:`echo_reply`), streamed word by word.

It satisfies :class:`pyllm.repl.backend.ChatBackend`, so a test drives the whole REPL without a
model and then reads what the model was asked (``calls``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from pyllm.repl.backend import ReplyStats
from pyllm.sampling_params import SamplingParams
from pyllm.types import Message

_CHAT_OVERHEAD = 3  # tokens a message costs besides its words in the fake (role, start, end)

FAKE_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "


def echo_reply(messages: Sequence[Message]) -> str:
    """The fake model's answer: it repeats the last user message, with a little Markdown."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return f"You said: **{last}**. That is all I know."


class FakeBackend:
    """A deterministic :class:`ChatBackend`: words are tokens.

    :param context_length: the context it claims to have.
    :param delay: seconds to sleep before each streamed word (exercise the toolbar/ttft).
    :param reply: ``reply(messages) -> str``, the full answer (default :func:`echo_reply`);
        it is streamed word by word and cut at ``params.max_tokens`` words.
    :param interrupt_after: raise ``KeyboardInterrupt`` after this many deltas, as a Ctrl-C in
        the middle of a reply would.

    ``calls`` records ``(messages, params)`` per request; ``closed`` counts iterators closed early.
    """

    def __init__(self, *, context_length: int = 512, delay: float = 0.0,
                 reply: Callable[[Sequence[Message]], str] = echo_reply,
                 interrupt_after: int | None = None, model_name: str = "fake-model") -> None:
        self.model_name = model_name
        self.context_length = context_length
        self.chat_template = FAKE_TEMPLATE
        self.delay = delay
        self.reply = reply
        self.interrupt_after = interrupt_after
        self.last_stats: ReplyStats | None = None
        self.calls: list[tuple[list[dict[str, str]], SamplingParams]] = []
        self.closed = 0
        self._vocab: dict[str, int] = {}

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"].split()) + _CHAT_OVERHEAD for m in messages) + 1

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        pieces = text.split()
        return [self._vocab.setdefault(p, len(self._vocab)) for p in pieces], pieces

    def stream_reply(self, messages: Sequence[Message], params: SamplingParams) -> Iterator[str]:
        messages = [dict(m) for m in messages]
        self.calls.append((messages, params))
        words = self.reply(messages).split(" ")[: params.max_tokens]
        start = time.perf_counter()
        first: float | None = None
        sent = 0
        finished = False
        try:
            for i, word in enumerate(words):
                if self.interrupt_after is not None and sent >= self.interrupt_after:
                    raise KeyboardInterrupt
                if self.delay:
                    time.sleep(self.delay)
                if first is None:
                    first = time.perf_counter() - start
                sent += 1
                yield word if i == 0 else " " + word
            finished = True
        finally:
            if not finished:
                self.closed += 1
            reason = "length" if len(words) == params.max_tokens else "stop"
            self.last_stats = ReplyStats(self.count_tokens(messages), sent,
                                         time.perf_counter() - start, first,
                                         reason if finished else "cancelled")
