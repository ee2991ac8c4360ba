"""OpenAI's batch file format, for `pyllm generate`: a request line in, a response line out.

Input, one request a line (https://platform.openai.com/docs/guides/batch)::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [...], "max_tokens": 100, "temperature": 0}}

``url`` is ``/v1/chat/completions`` (``body.messages``) or ``/v1/completions`` (``body.prompt``, one
string); without it, the body says which. Body fields map to sampling parameters: ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``seed``, ``stop``,
``frequency_penalty``, ``presence_penalty``, ``logit_bias``, and any other pyllm sampling parameter
by its own name (``top_k``, ``min_p``, ...). ``model``, ``user``, ``metadata``, ``store`` and
``service_tier`` are ignored (the job's model answers); other fields, and ``stream`` or
``logprobs`` set to true, are refused for that request.

Output, one line a request, in OpenAI's batch output format::

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "req_...", "body": {chat.completion object}},
     "error": null}

A request that fails gets ``"response": null, "error": {"code": TYPE, "message": ...}`` (the
codes are pyllm's error types: ``invalid_record``, ``context_length``, ...).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
REQUEST_FIELDS = {"custom_id", "method", "url", "body"}
OUTPUT_FIELDS = {"id", "custom_id", "response", "error"}

_RENAMED = {"max_completion_tokens": "max_tokens"}
_IGNORED = {"model", "user", "metadata", "store", "service_tier", "messages", "prompt"}
_ONLY_FALSE = {"stream", "logprobs"}  # features a batch job does not give: refused when asked for


def is_request(obj: Mapping[str, Any]) -> bool:
    """Whether an input record is an OpenAI batch request (it has "custom_id" and no "id")."""
    return "custom_id" in obj and "id" not in obj


def parse_request(obj: Mapping[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """``(endpoint, prompt, sampling overrides)`` of a request; ValueError naming the field at
    fault otherwise. The prompt is a string (completions) or chat messages."""
    method = obj.get("method", "POST")
    if method != "POST":
        raise ValueError(f'"method" must be "POST", got {method!r}')
    body = obj.get("body")
    if not isinstance(body, Mapping):
        raise ValueError('"body" must be an object (the request\'s body)')
    url = obj.get("url")
    if url is None:
        url = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    if url not in ENDPOINTS:
        raise ValueError(f'"url" {url!r} is not supported; supported: {", ".join(ENDPOINTS)}')
    endpoint = ENDPOINTS[url]
    prompt = _chat_messages(body) if endpoint == "chat" else _completion_prompt(body)
    return endpoint, prompt, _sampling_overrides(body)


def _chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("body.messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f'body.messages[{i}] must be an object with a string "role"')
        out.append({"role": m["role"], "content": _content_text(m.get("content"), i)})
    return out


def _content_text(content: Any, i: int) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, Mapping)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise ValueError(
                    f"body.messages[{i}].content: only text parts are supported "
                    f'({{"type": "text", "text": ...}})'
                )
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"body.messages[{i}].content must be a string or a list of text parts")


def _completion_prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError("body.prompt must be a string (one prompt per request)")
    return prompt


def _sampling_overrides(body: Mapping[str, Any]) -> dict[str, Any]:
    from pyllm.sampling_params import SamplingParams

    names = SamplingParams.field_names()
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in _IGNORED or value is None:
            continue
        if key in _ONLY_FALSE:
            if value is not False:
                raise ValueError(f"body.{key} is not supported in batch jobs (got {value!r})")
            continue
        name = _RENAMED.get(key, key)
        if name not in names:
            raise ValueError(f"body.{key} is not supported")
        if name in out:
            raise ValueError(f"body gives {name!r} twice (max_tokens and max_completion_tokens)")
        out[name] = [value] if name == "stop" and isinstance(value, str) else value
    return out


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def response_line(
    custom_id: str,
    endpoint: str,
    model: str,
    prompt_tokens: int,
    completions: list[Any],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The output line of a request that ran: its chat.completion or text_completion object."""
    if endpoint == "chat":
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(c.finish_reason),
            }
            for i, c in enumerate(completions)
        ]
        obj_id, kind = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
    else:
        choices = [
            {
                "index": i,
                "text": c.text,
                "logprobs": None,
                "finish_reason": _finish_reason(c.finish_reason),
            }
            for i, c in enumerate(completions)
        ]
        obj_id, kind = f"cmpl-{uuid.uuid4().hex}", "text_completion"
    generated = sum(len(c.token_ids) for c in completions)
    body = {
        "id": obj_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": prompt_tokens + generated,
        },
    }
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        **extra,
        "response": {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
        "error": None,
    }


def failure_line(
    custom_id: str, code: str, message: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The output line of a request that could not run."""
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        **extra,
        "response": None,
        "error": {"code": code, "message": message},
    }
