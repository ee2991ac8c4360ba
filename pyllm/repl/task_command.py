"""``/<task>`` in the REPL for every registered task that has no REPL command of its own.

``/sentiment I loved it`` runs a one-field task on the rest of the line; a task with several
input fields takes ``FIELD=VALUE`` words (shell quoting: ``/qa context="..." question="..."``).
Other ``NAME=VALUE`` words are the task's options (a JSON value, else a string). The result is
printed as its one value, or as JSON when it has several. A plugin that wants more registers its
own REPL command under the task's name (``register_repl_commands``), as the built-in tasks do.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

from pyllm.tasks import result_text
from pyllm.types import TaskAdapter


def usage(adapter: TaskAdapter) -> str:
    fields = tuple(adapter.input_fields)
    if len(fields) == 1:
        return f"/{adapter.name} {fields[0].upper()}"
    return f"/{adapter.name} " + " ".join(f"{f}=..." for f in fields)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_line(adapter: TaskAdapter, arg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(record, options) from the text after ``/<task>``; ValueError says what is missing."""
    fields = tuple(adapter.input_fields)
    if len(fields) == 1:
        if not arg.strip():
            raise ValueError(f"usage: {usage(adapter)}")
        return {fields[0]: arg.strip()}, {}
    record: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for word in shlex.split(arg):
        name, eq, value = word.partition("=")
        if not eq or not name:
            raise ValueError(f"expected NAME=VALUE, got {word!r}; usage: {usage(adapter)}")
        if name in fields:
            record[name] = value
        else:
            options[name.replace("-", "_")] = _value(value)
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; usage: {usage(adapter)}")
    return record, options


def task_handler(adapter: TaskAdapter) -> Callable[[Any, str], None]:
    """The REPL handler ``handler(session, arg)`` running ``adapter`` on the session's model."""

    def handler(session: Any, arg: str) -> None:
        try:
            record, options = parse_line(adapter, arg)
        except ValueError as e:
            session.error(f"/{adapter.name}: {e}")
            return
        llm = session.llm
        if llm is None:
            session.error(f"/{adapter.name} needs a loaded model")
            return
        try:
            result = adapter.run(llm, [record], **options)[0]
        except (ValueError, TypeError) as e:
            session.error(f"/{adapter.name}: {e}")
            return
        session.echo(result_text(result))

    return handler
