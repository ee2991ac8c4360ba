"""Which constraint a request asked for, checked without importing the engine behind it.

A request names at most one constraint, through one of the SamplingParams fields below (the
built-in kinds) or through ``constraint=(kind, spec)`` for a kind a plugin registered with the
``register_constraints`` hook. This module checks the shape of the value only (pyllm's CLI reads
SamplingParams at start-up, so nothing heavy is imported here); whether a schema, regex or
grammar compiles is checked when the request is made (`pyllm.constraints.compile_constraint`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyllm.sampling_params import field_error

__all__ = ["CONSTRAINT_FIELDS", "normalize_constraint_fields", "requested_constraint"]

# SamplingParams field -> the constraint kind it selects.
CONSTRAINT_FIELDS = {
    "json_schema": "json_schema",
    "json_object": "json_object",
    "regex": "regex",
    "choice": "choice",
    "grammar": "grammar",
    "constraint": None,  # (kind, spec): any registered kind
}


_fail = field_error  # the one wording of a bad SamplingParams field


def _json_schema_text(value: Any) -> str:
    """A JSON schema as compact JSON text (so SamplingParams stays hashable and frozen)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(
                f"SamplingParams.json_schema is not valid JSON ({exc}): {value[:80]!r}"
            ) from None
    else:
        parsed = value
    if not isinstance(parsed, (Mapping, bool)):
        _fail("json_schema", "a JSON schema (an object, as a dict or a JSON string)", value)
    return json.dumps(parsed, separators=(",", ":"))


def normalize_constraint_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The constraint fields of a SamplingParams, checked and in their stored form.

    Returns only the fields that change (``json_schema`` dict -> JSON text, ``choice`` list ->
    tuple...). Raises ValueError naming the field when a value has the wrong shape or when more
    than one constraint is set.
    """
    out: dict[str, Any] = {}
    schema = values.get("json_schema")
    if schema is not None:
        out["json_schema"] = _json_schema_text(schema)
    if not isinstance(values.get("json_object", False), bool):
        _fail("json_object", "True or False", values.get("json_object"))
    for name in ("regex", "grammar"):
        v = values.get(name)
        if v is not None and (not isinstance(v, str) or not v):
            _fail(name, "a non-empty string", v)
    choice = values.get("choice")
    if choice is not None:
        if (
            isinstance(choice, str)
            or not isinstance(choice, (list, tuple))
            or not choice
            or not all(isinstance(c, str) and c for c in choice)
        ):
            _fail("choice", "a non-empty list of non-empty strings", choice)
        out["choice"] = tuple(choice)
    generic = values.get("constraint")
    if generic is not None:
        if isinstance(generic, Mapping) and len(generic) == 1:
            generic = next(iter(generic.items()))
        if (
            not isinstance(generic, (list, tuple))
            or len(generic) != 2
            or not isinstance(generic[0], str)
            or not generic[0]
        ):
            _fail("constraint", "a (kind, spec) pair or a one-entry {kind: spec} mapping", generic)
        kind, spec = generic
        if isinstance(spec, (Mapping, list)):
            spec = json.dumps(spec, separators=(",", ":"))  # hashable; the kind parses it back
        out["constraint"] = (kind, spec)
    chosen = [name for name in CONSTRAINT_FIELDS if (values.get(name) not in (None, False))]
    if len(chosen) > 1:
        raise ValueError(
            "SamplingParams takes one constraint at a time; got " + " and ".join(chosen)
        )
    return out


def requested_constraint(params: Any) -> tuple[str, Any] | None:
    """(kind, spec) of the constraint a SamplingParams asks for, or None."""
    if params.json_schema is not None:
        return "json_schema", params.json_schema
    if params.json_object:
        return "json_object", None
    if params.regex is not None:
        return "regex", params.regex
    if params.choice is not None:
        return "choice", params.choice
    if params.grammar is not None:
        return "grammar", params.grammar
    if params.constraint is not None:
        return params.constraint[0], params.constraint[1]
    return None
