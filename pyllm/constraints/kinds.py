"""The built-in constraint kinds: each turns a request's spec into an llguidance grammar.

A kind is a callable ``kind(spec) -> str`` returning a grammar llguidance accepts (a Lark
grammar, or its JSON grammar format); it raises ValueError for a spec it cannot use. The
built-ins are registered through the ``register_constraints`` hook by the ``pyllm_samplers``
plugin, like any plugin's kinds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["BUILTIN_KINDS", "choice", "grammar", "json_object", "json_schema", "regex"]


def _llg() -> Any:
    import llguidance

    return llguidance.LLMatcher


# How pyllm's JSON looks: json.dumps's separators and no other whitespace. llguidance's own default
# allows any whitespace between tokens, which a weak model fills forever ("{\n\n\t\t ..."
# until max_tokens). A schema's "x-guidance" object still overrides these.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_schema(spec: Any) -> str:
    """A JSON schema (dict or JSON text); extra properties follow the schema's own
    ``additionalProperties``; formatting as `JSON_DEFAULTS`."""
    try:
        return _llg().grammar_from_json_schema(
            spec if isinstance(spec, str) else json.dumps(spec), defaults=JSON_DEFAULTS
        )
    except ValueError as exc:
        raise ValueError(f"json_schema: {exc}") from None


def json_object(spec: Any = None) -> str:
    """Any JSON object."""
    return json_schema({"type": "object"})


def regex(spec: Any) -> str:
    """The whole output matches this regular expression (Rust ``regex`` syntax)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"regex: needs a non-empty pattern, got {spec!r}")
    return _llg().grammar_from_regex(spec)


def choice(spec: Sequence[str]) -> str:
    """The output is exactly one of the strings (as Lark string literals, JSON-escaped)."""
    if isinstance(spec, str):
        spec = json.loads(spec) if spec.startswith("[") else spec.split(",")
    options = list(spec)
    if not options or not all(isinstance(o, str) and o for o in options):
        raise ValueError(f"choice: needs a non-empty list of non-empty strings, got {spec!r}")
    return _llg().grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))


def grammar(spec: Any) -> str:
    """A Lark-style grammar in llguidance's dialect (``start:`` rule, ``/regex/`` terminals,
    ``%json {...}`` for embedded schemas)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"grammar: needs a non-empty grammar text, got {spec!r}")
    return _llg().grammar_from_lark(spec)


BUILTIN_KINDS = {
    "json_schema": json_schema,
    "json_object": json_object,
    "regex": regex,
    "choice": choice,
    "grammar": grammar,
}
