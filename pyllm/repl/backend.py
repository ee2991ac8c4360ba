"""What the REPL needs from a model, and what provides it.

:class:`ChatBackend` is the whole contract between the REPL and a model: a name, a context length,
token counting of a conversation as the model will see it, tokenizing a text for ``/tokens``, a
streamed reply, the last reply's figures and the chat template's text. :class:`LLMBackend` adapts
``pyllm.api.LLM`` to it (tests/fake_backend.py has a deterministic one for the REPL's tests).

Each turn sends the whole conversation: re-using the key/value cache of the turns before is the
engine's job (prefix caching), so the REPL stays stateless about the model.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Message

__all__ = ["ChatBackend", "LLMBackend", "ReplyStats"]


@dataclass(frozen=True)
class ReplyStats:
    """Figures for one reply.

    ``ttft`` is the time from the request to the first streamed text (the prefill, mostly);
    ``seconds`` is the whole reply. ``tokens_per_s`` is the decode rate: the tokens after the first
    over the time after the first (the prefill would otherwise dominate short replies).
    """

    prompt_tokens: int
    tokens: int
    seconds: float
    ttft: float | None
    finish_reason: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if self.ttft is not None and self.tokens > 1 and self.seconds > self.ttft:
            return (self.tokens - 1) / (self.seconds - self.ttft)
        if self.tokens and self.seconds > 0:
            return self.tokens / self.seconds
        return None


@runtime_checkable
class ChatBackend(Protocol):
    """A model as the REPL sees it.

    Attributes:
        model_name: shown in the toolbar and ``/show``.
        context_length: the most tokens a conversation plus its reply may hold.
        chat_template: the template's source text (``/show template``).
        last_stats: the figures of the last reply (None before the first).
    """

    model_name: str
    context_length: int
    chat_template: str
    last_stats: ReplyStats | None

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of ``messages`` rendered by the chat template, generation prompt included."""
        ...

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids of ``text`` (as plain text, no special tokens) and each id's piece."""
        ...

    def stream_reply(self, messages: Sequence[Message], params: SamplingParams) -> Iterator[str]:
        """Stream the assistant's reply to ``messages`` as text deltas.

        The REPL calls ``close()`` on the iterator when the user interrupts it (Ctrl-C): a
        generator's ``finally`` must then cancel the request. ``last_stats`` is set when the
        iterator ends, normally or not.
        """
        ...


# ------------------------------------------------------------------------------------------------
# The real model
# ------------------------------------------------------------------------------------------------


class LLMBackend:
    """:class:`ChatBackend` over a loaded ``pyllm.api.LLM``.

    The REPL's figures are measured here, around ``llm.stream``: time to the first delta and the
    number of reply tokens (the reply text tokenized again: the stream yields text, not ids).
    """

    def __init__(self, llm: Any, *, name: str | None = None) -> None:
        self.llm = llm
        self.model_name = name or _model_name(llm)
        self.context_length = int(_context_length(llm))
        self.device = _device(llm)
        self.last_stats: ReplyStats | None = None

    @property
    def chat_template(self) -> str:
        template = getattr(self.llm, "chat_template", None)
        return getattr(template, "source", None) or str(template or "")

    @functools.cached_property
    def template_system_prompt(self) -> str | None:
        """The system prompt the chat template writes when the conversation has none (SmolLM2's
        "You are a helpful AI assistant named SmolLM, ..."), or None.

        Found by rendering one user turn with a marker system prompt and without one: the text
        that stands where the marker stood is the template's own."""
        marker = "\x00pyllm-system\x00"
        user: list[Message] = [{"role": "user", "content": "\x00pyllm-user\x00"}]
        try:
            with_marker = self.render([{"role": "system", "content": marker}, *user])
            without = self.render(user)
        except Exception:  # noqa: BLE001 - a template that refuses system turns has none
            return None
        at = with_marker.find(marker)
        if at < 0:
            return None
        before, after = with_marker[:at], with_marker[at + len(marker) :]
        if (
            len(without) <= len(before) + len(after)
            or not without.startswith(before)
            or not without.endswith(after)
        ):
            return None
        return without[len(before) : len(without) - len(after)].strip() or None

    def info(self) -> list[tuple[str, str]]:
        """Rows for /show info: what the model is and how it was loaded."""
        llm = self.llm
        rows = [("model", self.model_name)]
        loaded = getattr(llm, "loaded", None)
        if loaded is not None and getattr(loaded, "path", None) is not None:
            rows.append(("file", f"{loaded.path} ({loaded.kind})"))
        config = getattr(llm, "config", None)
        if config is not None:
            rows.append(
                (
                    "architecture",
                    f"{config.family}, {config.n_layer} layers, n_embd "
                    f"{config.n_embd}, {config.n_head} heads "
                    f"({config.n_kv_head} KV)",
                )
            )
            rows.append(("vocabulary", f"{config.vocab_size} tokens"))
            rows.append(("context", f"{self.context_length} tokens"))
        else:
            rows.append(("context", f"{self.context_length} tokens"))
        if getattr(llm, "kv_dtype", None):
            rows.append(("KV cache", str(llm.kv_dtype)))
        model = getattr(llm, "model", None)
        if model is not None and getattr(model, "int8_activations", None) is not None:
            rows.append(("activations", "int8" if model.int8_activations else "exact (float32)"))
        if self.device:
            rows.append(("device", self.device))
        rows.append(("system", self.template_system_prompt or "(none from the template)"))
        return rows

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the model sees for ``messages`` (generation prompt included)."""
        return self.llm.chat_template.render(list(messages), add_generation_prompt=True)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        if not messages:  # nothing to prefill (and the API refuses an empty conversation)
            return 0
        return len(self.llm.encode_prompt(list(messages)))  # exactly what stream() will prefill

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        """Ids and, per id, the text it stands for (its vocabulary piece when the bytes are only
        part of a UTF-8 character)."""
        tokenizer = self.llm.tokenizer
        ids = tokenizer.encode(text, add_bos=False)
        pieces = []
        for i in ids:
            try:
                pieces.append(tokenizer.token_bytes(i).decode("utf-8"))
            except UnicodeDecodeError:
                pieces.append(tokenizer.id_to_piece(i))
        return ids, pieces

    def stream_reply(self, messages: Sequence[Message], params: SamplingParams) -> Iterator[str]:
        messages = list(messages)
        prompt_tokens = self.count_tokens(messages)
        parts: list[str] = []
        start = time.perf_counter()
        first: float | None = None
        stream = self.llm.stream(messages, params)
        try:
            for delta in stream:
                if not delta:
                    continue
                if first is None:
                    first = time.perf_counter() - start
                parts.append(delta)
                yield delta
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels the engine's request when we stop early
            seconds = time.perf_counter() - start
            text = "".join(parts)
            tokens = len(self.llm.tokenizer.encode(text, add_bos=False)) if text else 0
            self.last_stats = ReplyStats(prompt_tokens, tokens, seconds, first)


def _model_name(llm: Any) -> str:
    for attr in ("model_name", "name"):
        value = getattr(llm, attr, None)
        if isinstance(value, str) and value:
            return value
    path = getattr(llm, "path", None)
    return getattr(path, "name", None) or type(llm).__name__


def _device(llm: Any) -> str | None:
    """Where the model runs, for /show: "cpu", or "cuda:0 (general CUDA kernels)"."""
    device = getattr(getattr(llm, "model", None), "device", None)
    if device is None:
        return None
    if getattr(device, "type", None) == "cuda":
        from pyllm import ops

        return f"{device} ({ops.get_cuda_kernels()} CUDA kernels)"
    return str(device)


def _context_length(llm: Any) -> int:
    for attr in ("context_length", "max_model_len"):
        value = getattr(llm, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(llm, "config", None)
    for attr in ("context_length", "max_seq_len", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context length of {type(llm).__name__}")
