"""What a plugin may register: each ``register(...)`` call checked against the protocols in
:mod:`pyllm.types` before it reaches a registry.

:func:`check_registration` turns the arguments of one call into ``(name, object)`` or raises
:class:`Refused` saying what is wrong with it (the plugin host reports the refusal with the
plugin's name, in a warning and in ``pyllm plugins``). A refusal concerns that one registration:
the plugin's other registrations still count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Refused(Exception):
    """One registration that pyllm does not accept: ``name`` (as given) and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ReplCommand:
    """A REPL slash command registered by a plugin."""

    name: str
    handler: Callable[..., Any]
    help: str
    aliases: tuple[str, ...] = ()
    plugin: str = ""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Refused(_shown(name), "the name must be a non-empty string")
    return name


def _missing(obj: object, members: tuple[str, ...]) -> list[str]:
    return [m for m in members if not hasattr(obj, m)]


def builtin_command_names() -> frozenset[str]:
    """The names of pyllm's own commands, which no plugin command may take."""
    from pyllm.cli.main import BUILTIN_COMMANDS

    return frozenset(BUILTIN_COMMANDS)


def _command(command: object) -> tuple[str, Any]:
    import click

    if not isinstance(command, click.Command):
        raise Refused(_shown(command), "not a click.Command")
    if not command.name:
        raise Refused(_shown(command), "the click command has no name")
    if command.name in builtin_command_names():
        raise Refused(command.name, "a built-in command has that name")
    return command.name, command


def _repl_command(
    plugin: str, name: object, handler: object, help: object = "", aliases: tuple[str, ...] = ()
) -> tuple[str, Any]:
    name = _name(name).lstrip("/")
    if not callable(handler):
        raise Refused(name, f"the handler {_shown(handler)} is not callable")
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise Refused(name, f"aliases must be a tuple of names, got {_shown(aliases)}")
    return name, ReplCommand(
        name, handler, str(help), tuple(a.lstrip("/") for a in aliases), plugin
    )


def _task(name: str, adapter: object) -> None:
    missing = _missing(adapter, ("name", "description", "input_fields", "run"))
    if missing:
        raise Refused(
            name,
            f"{_shown(adapter)} is not a TaskAdapter (pyllm.types): it has no {', '.join(missing)}",
        )
    checked: Any = adapter  # has the four members (just checked); their values are checked below
    if checked.name != name:
        raise Refused(name, f"the adapter's name is {checked.name!r}")
    fields = checked.input_fields
    if isinstance(fields, str) or not fields or not all(isinstance(f, str) and f for f in fields):
        raise Refused(name, f"input_fields must be a tuple of field names, got {_shown(fields)}")
    if not callable(checked.run):
        raise Refused(name, "the adapter's run is not callable")


def _model_source(name: str, source: object) -> None:
    missing = _missing(source, ("name", "can_resolve", "resolve"))
    if missing:
        raise Refused(
            name,
            f"{_shown(source)} is not a ModelSource (pyllm.types): it has no {', '.join(missing)}",
        )
    checked: Any = source  # has the three members (just checked)
    if not callable(checked.can_resolve) or not callable(checked.resolve):
        raise Refused(name, "can_resolve and resolve must be methods")


def check_registration(
    kind: str, plugin: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, Any]:
    """``(name, object)`` for one ``register(*args, **kwargs)`` call of a ``kind`` registry.

    Raises :class:`Refused` when the object does not satisfy its protocol, and ``TypeError``
    when the call itself does not match the ``register`` signature of the hook.
    """
    if kind == "commands":
        return _command(*args, **kwargs)
    if kind == "repl_commands":
        return _repl_command(plugin, *args, **kwargs)

    def pair(name: object, obj: object) -> tuple[str, Any]:
        return _name(name), obj

    name, obj = pair(*args, **kwargs)
    if kind == "tokenizers" and not callable(obj):
        raise Refused(
            name,
            f"{_shown(obj)} is not a tokenizer factory (a callable "
            f"factory(metadata, path) -> Tokenizer)",
        )
    if kind == "samplers" and not callable(obj):
        raise Refused(
            name, f"{_shown(obj)} is not a SamplerStep (a callable step(logits, context) -> logits)"
        )
    if kind == "constraints" and not callable(obj):
        raise Refused(
            name, f"{_shown(obj)} is not a constraint kind (a callable kind(spec) -> grammar)"
        )
    if kind == "tasks":
        _task(name, obj)
    if kind == "model_sources":
        _model_source(name, obj)
    return name, obj
