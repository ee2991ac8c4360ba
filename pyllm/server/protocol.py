"""Request and response bodies of the HTTP server, following OpenAI's API.

Requests are pydantic models with OpenAI's field names. Fields OpenAI defines that pyllm does not
implement are refused by name (never silently ignored), so a client learns at once that its
option had no effect; pyllm's own sampling fields (every `SamplingParams` field OpenAI lacks:
top_k, min_p, repetition_penalty, samplers, ...) are accepted as extra body fields, the way vLLM
accepts them, and checked by `SamplingParams` itself.

To add a feature (response_format, tools, ...): declare the field on the request model, remove
it from `UNSUPPORTED_FIELDS`, and read it where the route builds its request.
"""

from __future__ import annotations

import difflib
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pyllm.sampling_params import SamplingParams

# ---------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(
            error=ErrorDetail(message=message, type=type, param=param, code=code)
        )
        self.headers = headers


# ---------------------------------------------------------------------- sampling fields

# OpenAI fields this server knows of but does not implement: refused with a clear 400.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "best_of": "best_of is not supported (use n)",
}
# OpenAI fields accepted and ignored: they change nothing about the generated text.
IGNORED_FIELDS = frozenset(
    {
        "user",
        "store",
        "metadata",
        "service_tier",
        "parallel_tool_calls",
        "reasoning_effort",
        "web_search_options",
    }
)
# SamplingParams fields that OpenAI spells itself (so they are not pyllm extras).
_OPENAI_SAMPLING = frozenset(
    {
        "n",
        "max_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "seed",
        "stop",
        "logprobs",
    }
)
PYLLM_EXTRA_FIELDS = tuple(f for f in SamplingParams.field_names() if f not in _OPENAI_SAMPLING)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """The fields chat and text completions share."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def extra_fields(self) -> dict[str, Any]:
        """pyllm's sampling fields given in the body; an unknown field is refused by name."""
        extras = dict(self.model_extra or {})
        out = {}
        for key, value in extras.items():
            if key in UNSUPPORTED_FIELDS:
                raise APIError(
                    400, UNSUPPORTED_FIELDS[key], param=key, code="unsupported_parameter"
                )
            if key in IGNORED_FIELDS:
                continue
            if key in ("tools", "tool_choice") and isinstance(self, ChatCompletionRequest):
                continue  # read by the chat route (pyllm.constraints.openai.tool_call_mode)
            if key in ("tools", "tool_choice"):
                raise APIError(
                    400,
                    f"{key} is a chat completions field",
                    param=key,
                    code="unsupported_parameter",
                )
            if key == "response_format":  # structured output (docs/structured.md)
                from pyllm.constraints.openai import response_format_fields

                try:
                    out.update(response_format_fields(value))
                except ValueError as exc:
                    raise APIError(400, str(exc), param=key, code="invalid_value") from None
                continue
            if key not in PYLLM_EXTRA_FIELDS:
                known = list(type(self).model_fields) + list(PYLLM_EXTRA_FIELDS)
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise APIError(
                    400, f"unknown field {key!r}{hint}", param=key, code="unknown_parameter"
                )
            out[key] = value
        return out

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ---------------------------------------------------------------------- chat


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The content as text: a string, or the text parts of a list of content parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"messages[{index}].content[{j}]: only text parts are "
                    f"supported, got type {part.get('type')!r}",
                    param=f"messages[{index}].content",
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class ChatLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobEntry] | None = None


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ---------------------------------------------------------------------- text completions


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(t, int) for t in p):
            return [list(p)]  # type: ignore[arg-type]  # all ints: one prompt of token ids
        if not p:
            raise APIError(400, "prompt is an empty list", param="prompt")
        return list(p)  # type: ignore[arg-type]  # strings or id lists (the field's other types)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ---------------------------------------------------------------------- models, embeddings


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "pyllm"
    context_length: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------------- tokenize


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    pieces: list[str]
