"""``pyllm <task>`` for every registered task (``register_tasks``), built-in or a plugin's.

A task without a command of its own gets a generic one built from its adapter
(:class:`pyllm.types.TaskAdapter`): the input field as the argument when the task has one
(``pyllm sentiment "I loved it"``; standard input when it is a pipe), ``--FIELD VALUE`` for each
field otherwise, ``-O NAME=VALUE`` for the task's options (a JSON value, else a string), and the
options every task command shares (``-m``, ``-i``/``-o``, ``--retry-errors``, ``--json``,
``--batch-size``, ``--int8``, ``--kv-dtype``, ``--device``, ``--ctx``; :mod:`pyllm.cli_options`).
A JSONL job exits with status 3 when a record failed in this run. A plugin that wants a richer
interface registers a click command named like its task (``register_commands``), which takes the
generic one's place: the built-in tasks do.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import click

from pyllm import cli_options
from pyllm.cli_options import (
    JOB_HELP,
    check_io,
    print_single,
    run_file,
    task_input_options,
    text_argument,
)
from pyllm.tasks import result_text
from pyllm.types import TaskAdapter


def parse_task_options(pairs: Collection[str]) -> dict[str, Any]:
    """``-O NAME=VALUE`` pairs as keyword arguments: the value read as JSON when it is JSON
    (numbers, true/false, lists), else kept as the string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name.isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="-O")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


def task_command(adapter: TaskAdapter) -> click.Command:
    """The generic ``pyllm <task>`` command for ``adapter`` (see the module docstring)."""
    name = adapter.name
    fields = tuple(adapter.input_fields)
    single = len(fields) == 1

    def callback(**kwargs: Any) -> None:
        options = parse_task_options(kwargs.pop("task_options"))
        values = {f: kwargs.pop(f"field_{f}") for f in fields}
        given = any(v is not None for v in values.values())
        input_path, output_path = kwargs["input_path"], kwargs["output_path"]
        check_io(input_path, output_path, False, given)
        if input_path is None:
            if single:
                values[fields[0]] = text_argument(values[fields[0]], fields[0].upper())
            missing = [f for f, v in values.items() if v is None]
            if missing:
                flags = " ".join(f"--{f.replace('_', '-')} TEXT" for f in missing)
                raise click.UsageError(f"give {flags}, or -i IN.jsonl")
        llm = cli_options.load_llm(
            kwargs["model"],
            kwargs["device"],
            int8=kwargs["int8"],
            kv_dtype=kwargs["kv_dtype"],
            ctx=kwargs["ctx"],
        )
        if input_path is not None:
            run_file(
                name,
                llm,
                input_path,
                output_path,
                options,
                batch_size=kwargs["batch_size"],
                progress=kwargs["progress"],
                evaluate=None,
                as_json=kwargs["as_json"],
                retry_errors=kwargs["retry_errors"],
            )
            return
        result = adapter.run(llm, [values], **options)[0]
        print_single(result, kwargs["as_json"], result_text)

    record = ", ".join(f'"{f}"' for f in ("id", *fields))
    help_text = (
        f"{adapter.description}\n\nThe task {name!r} on one input or on every "
        f"record of -i IN.jsonl (lines {{{record}}}). Task options: -O NAME=VALUE."
        f"\n\n{JOB_HELP}"
    )
    # click lists options in the reverse order of the decorators applied here
    decorate = [
        task_input_options(evaluate=False),
        click.option(
            "-O",
            "--option",
            "task_options",
            multiple=True,
            metavar="NAME=VALUE",
            help="A task option (repeatable).",
        ),
    ]
    if single:
        decorate.append(
            click.argument(f"field_{fields[0]}", required=False, metavar=fields[0].upper())
        )
    else:
        decorate += [
            click.option(f"--{f.replace('_', '-')}", f"field_{f}", help=f"The {f}.")
            for f in reversed(fields)
        ]
    for decorator in decorate:
        callback = decorator(callback)
    return click.command(name, help=help_text, short_help=adapter.description)(callback)


def task_commands(taken: Collection[str]) -> dict[str, click.Command]:
    """name -> generic command for every registered task whose name no command has taken."""
    from pyllm import plugins

    return {
        name: task_command(adapter)
        for name, adapter in plugins.tasks().items()
        if name not in taken
    }
