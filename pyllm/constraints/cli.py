"""The structured-output flags of `pyllm run`: --schema, --regex, --choice and --format.

Each sets one SamplingParams constraint field (``--set json_schema=...`` and the other fields
work too); `structured_overrides` turns the flags into those fields and checks their values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = [
    "load_schema",
    "repl_overrides",
    "structured_options",
    "structured_overrides",
]

FLAGS = ("schema", "regex", "choice", "output_format")


def structured_options() -> Callable[[Any], Any]:
    """Decorate a click command with --schema, --regex, --choice and --format."""

    def decorate(f: Any) -> Any:
        f = click.option(
            "--format",
            "output_format",
            type=click.Choice(["json"]),
            default=None,
            help="The output is a JSON object (any; --schema for a given shape).",
        )(f)
        f = click.option(
            "--choice",
            "choice",
            default=None,
            metavar="A,B,C",
            help="The output is exactly one of these comma-separated strings.",
        )(f)
        f = click.option(
            "--regex",
            "regex",
            default=None,
            metavar="PATTERN",
            help="The whole output matches this regular expression.",
        )(f)
        f = click.option(
            "--schema",
            "schema",
            default=None,
            metavar="FILE|JSON",
            help="The output is JSON matching this JSON schema (a file, or the "
            "schema itself as JSON text).",
        )(f)
        return f

    return decorate


def load_schema(value: str) -> str:
    """A JSON schema given as JSON text or as a file holding it; its JSON text.
    Raises ValueError saying which one failed and why."""
    text = value.strip()
    if not text.startswith("{"):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"--schema {value!r}: not JSON text and not a readable file ({exc.strerror or exc})"
            ) from None
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--schema {value!r}: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(
            f"--schema {value!r}: a JSON schema is an object, got {type(parsed).__name__}"
        )
    return json.dumps(parsed)


def structured_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the flags from a command's kwargs; the SamplingParams fields they set."""
    schema, regex, choice, fmt = (kwargs.pop(k, None) for k in FLAGS)
    out: dict[str, Any] = {}
    if schema is not None:
        try:
            out["json_schema"] = load_schema(schema)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--schema") from None
    if regex is not None:
        out["regex"] = regex
    if choice is not None:
        options = [c.strip() for c in choice.split(",") if c.strip()]
        if not options:
            raise click.BadParameter(
                f"needs comma-separated strings, got {choice!r}", param_hint="--choice"
            )
        out["choice"] = tuple(options)
    if fmt == "json":
        out["json_object"] = True
    if len(out) > 1:
        raise click.UsageError(
            "--schema, --regex, --choice and --format are one constraint at a "
            "time; got " + ", ".join(sorted(out))
        )
    return out


# Every constraint field at its "none" value: a new constraint replaces the old one.
_CLEARED: dict[str, Any] = {
    "json_schema": None,
    "json_object": False,
    "regex": None,
    "choice": None,
    "grammar": None,
    "constraint": None,
}
REPL_NAMES = ("format", "schema")


def repl_overrides(name: str, value: str) -> dict[str, Any]:
    """SamplingParams fields for the REPL's ``/set format json|off`` and
    ``/set schema FILE|JSON|off`` (either replaces any constraint set before). Raises ValueError
    for a bad value."""
    low = value.strip().lower()
    if low in ("off", "none", "text"):
        return dict(_CLEARED)
    if name == "format":
        if low != "json":
            raise ValueError(f"format must be json or off, got {value!r}")
        return {**_CLEARED, "json_object": True}
    return {**_CLEARED, "json_schema": load_schema(value)}
