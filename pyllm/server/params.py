"""OpenAI request fields -> SamplingParams, with the server's limits and OpenAI's defaults.

OpenAI's defaults differ from SamplingParams' in one place: `max_tokens` defaults to whatever
room the context leaves after the prompt. Everything else maps one to one; pyllm's own fields
come from the body's extra fields. SamplingParams' validation messages become 400 errors that
name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyllm.sampling_params import SamplingParams
from pyllm.server.protocol import APIError, ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_n: int = 16  # completions per prompt
    max_prompts: int = 64  # prompts in one /v1/completions request
    max_stop: int = 16  # stop strings
    max_body_bytes: int = 4 << 20
    max_waiting: int = 256  # requests queued for a place in the batch before 429s
    max_embedding_inputs: int = 256


_FIELD = re.compile(r"SamplingParams\.([a-z_]+)")


def _params_error(exc: ValueError) -> APIError:
    """A SamplingParams validation error as a 400 naming the field."""
    text = str(exc)
    m = _FIELD.search(text)
    return APIError(
        400,
        text.replace("SamplingParams.", ""),
        param=m.group(1) if m else None,
        code="invalid_value",
    )


def max_new_tokens(
    requested: int | None, prompt_tokens: int, context_length: int, field: str
) -> int:
    """The request's max_tokens, or the room left in the context; a request that cannot fit
    is a 400 naming both counts."""
    room = context_length - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context_length} tokens, "
            f"but the prompt has {prompt_tokens} tokens (at least one token of "
            f"room is needed for the reply). Shorten the prompt.",
            param="messages" if field == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise APIError(
            400,
            f"{field} must be an integer >= 1, got {requested!r}",
            param=field,
            code="invalid_value",
        )
    if prompt_tokens + requested > context_length:
        raise APIError(
            400,
            f"This model's maximum context length is {context_length} tokens. "
            f"The prompt has {prompt_tokens} tokens and {field} asks for "
            f"{requested} more ({prompt_tokens + requested} in all). Lower "
            f"{field} or shorten the prompt.",
            param=field,
            code="context_length_exceeded",
        )
    return requested


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    max_tokens: int,
    logprobs: int | None,
    limits: Limits,
) -> SamplingParams:
    """SamplingParams for a chat or text completion request (max_tokens already resolved)."""
    if not 1 <= req.n <= limits.max_n:
        raise APIError(
            400,
            f"n must be an integer in 1..{limits.max_n}, got {req.n}",
            param="n",
            code="invalid_value",
        )
    stop = req.stop_list()
    if len(stop) > limits.max_stop:
        raise APIError(
            400,
            f"stop: at most {limits.max_stop} strings, got {len(stop)}",
            param="stop",
            code="invalid_value",
        )
    values: dict[str, Any] = {
        "n": req.n,
        "max_tokens": max_tokens,
        "stop": stop,
        "logprobs": logprobs,
    }
    for name in (
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "logit_bias",
    ):
        value = getattr(req, name)
        if value is not None:
            values[name] = value
    extras = req.extra_fields()
    values.update(extras)
    try:
        return SamplingParams(**values)
    except ValueError as exc:
        raise _params_error(exc) from None
    except TypeError as exc:  # a field given with a type SamplingParams cannot take
        raise APIError(400, str(exc), code="invalid_value") from None
