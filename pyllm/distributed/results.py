"""The few facts a caller reads off an output record, in either of `pyllm generate`'s formats
(pyllm's own line, or OpenAI's batch output line for a request in OpenAI's batch format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResultFacts:
    text: str | None  # the first completion's text (None for an error)
    finish_reason: str | None
    completion_tokens: int  # tokens generated for the record (every completion)
    error: str | None  # "<type>: <message>", or None when the record ran


def result_facts(obj: dict[str, Any]) -> ResultFacts:
    from pyllm.jobs import is_error_line

    if is_error_line(obj):
        err: dict[str, Any] = obj["error"] if isinstance(obj.get("error"), dict) else {}
        kind = err.get("type") or err.get("code") or "error"
        return ResultFacts(None, None, 0, f"{kind}: {err.get('message', '')}")
    if "custom_id" in obj:  # OpenAI's format: the completion object is the response's body
        body = obj["response"]["body"]
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return ResultFacts(text, choice["finish_reason"], body["usage"]["completion_tokens"], None)
    first = obj["outputs"][0] if "outputs" in obj else obj
    tokens = obj["usage"]["completion_tokens"]
    return ResultFacts(first["text"], first["finish_reason"], tokens, None)
