"""OpenAI's ``response_format`` as SamplingParams constraint fields (used by ``pyllm serve``).

``{"type": "text"}`` asks for nothing; ``{"type": "json_object"}`` for any JSON object;
``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}`` for
JSON matching the schema. The schema is enforced token by token whatever ``strict`` says
(OpenAI's non-strict mode only tries; here trying and enforcing are the same thing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["response_format_fields"]


def response_format_fields(response_format: Any) -> dict[str, Any]:
    """SamplingParams fields for an OpenAI ``response_format`` object; ValueError saying what is
    wrong otherwise."""
    if response_format is None:
        return {}
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, got {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise ValueError('response_format json_schema needs {"json_schema": {"name": ..., '
                             '"schema": {...}}}')
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"response_format json_schema.strict must be true or false, got {strict!r}")
        return {"json_schema": dict(spec["schema"])}
    raise ValueError(f"response_format type must be text, json_object or json_schema, got {kind!r}")
