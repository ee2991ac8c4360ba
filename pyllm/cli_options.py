"""Public helpers for the commands a plugin adds (``register_commands``): the options every
model command shares, and the one-text-or-a-JSONL-file shape of the task commands.

This module and :mod:`pyllm.types` are what a plugin's command may build on (docs/plugins.md):

- :func:`device_option` / :func:`resolve_device`, :func:`int8_option`, :func:`kv_dtype_option`,
  :func:`sampling_options` / :func:`pop_sampling_params`: the flags of pyllm's own commands;
- :func:`input_options` (a decorator: ``-m/--model``, ``-i/-o``, ``--json``, ``--eval``,
  ``--batch-size``, ``--progress``, ``--device``; :func:`task_input_options` leaves ``--eval``
  out), :func:`check_io`, :func:`text_argument`, :func:`load_llm`, :func:`run_file`,
  :func:`print_single`: a task command. A single input prints the result (``--json``: the
  result object on one line). A JSONL file runs through :func:`pyllm.tasks.run_jsonl` (the
  batch-job rules of :mod:`pyllm.jobs`: error lines for bad records, resume on re-run).
  ``--eval`` scores the output against the gold field of each input record and prints the
  metric (``--json``: as one JSON object).

Errors a command raises as ``click.UsageError`` / ``click.ClickException`` (or ``ValueError``)
are printed by pyllm as one ``error: ...`` line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from pyllm.cli.options import (
    device_option,
    int8_option,
    kv_dtype_option,
    pop_sampling_params,
    resolve_device,
    sampling_options,
)

__all__ = [
    "device_option", "resolve_device", "int8_option", "kv_dtype_option", "sampling_options",
    "pop_sampling_params", "input_options", "task_input_options", "load_llm", "text_argument",
    "check_io", "run_file", "print_single",
]


def input_options(f: Any) -> Any:
    """-i/-o, --model, --device, --json, --eval, --batch-size, --progress."""
    return task_input_options(evaluate=True)(f)


def task_input_options(evaluate: bool = True) -> Callable[[Any], Any]:
    """The options of :func:`input_options`; ``evaluate=False`` leaves ``--eval`` out (the
    command then receives no ``evaluate`` argument)."""

    def decorate(f: Any) -> Any:
        f = device_option()(f)
        f = click.option("--progress/--no-progress", default=None,
                         help="Progress bar for -i (default: when stderr is a terminal).")(f)
        f = click.option("--batch-size", type=click.IntRange(1, 1024), default=16,
                         show_default=True, help="Records run together (-i).")(f)
        if evaluate:
            f = click.option("--eval", "evaluate", is_flag=True,
                             help="With -i: score the results against each record's gold field "
                                  "and print the metric.")(f)
        return _io_options(f)

    return decorate


def _io_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(f)
    f = click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Output JSONL (appended; a re-run resumes).")(f)
    f = click.option("-i", "--input", "input_path",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Input JSONL, one record a line with an \"id\".")(f)
    f = click.option("--model", "-m", default=None,
                     help="Model name, alias, .gguf path or Hugging Face folder  [default: the "
                          "one `pyllm models default` set, else smollm2]")(f)
    return f


def load_llm(model: str, device: str = "auto") -> Any:
    """The model for a command: ``pyllm.load`` on the device ``--device`` resolves to."""
    import pyllm

    return pyllm.load(model, resolve_device(device), progress=sys.stderr.isatty())


def text_argument(text: str | None, what: str = "TEXT") -> str:
    """The TEXT argument, or standard input when it is a pipe (`-` reads it too)."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise click.UsageError(f"give {what}, or -i IN.jsonl")
        return sys.stdin.read()
    return text


def check_io(input_path: Path | None, output_path: Path | None, evaluate: bool,
             has_single: bool) -> None:
    """Usage errors for a task command's mix of a single input, -i, -o and --eval."""
    if input_path is not None and has_single:
        raise click.UsageError("give either a single input or -i IN.jsonl, not both")
    if input_path is None and (output_path is not None or evaluate):
        raise click.UsageError("-o and --eval need -i IN.jsonl")
    if input_path is not None and output_path is None and not evaluate:
        raise click.UsageError("-i needs -o OUT.jsonl (or --eval)")


def run_file(task: str, llm: Any, input_path: Path, output_path: Path | None,
             options: Mapping[str, Any], *, batch_size: int, progress: bool | None,
             evaluate: Callable[[list[tuple[dict[str, Any], dict[str, Any]]]], tuple[dict, str]]
             | None, as_json: bool) -> None:
    """Run a JSONL job; with `evaluate`, score every (input record, output line) pair that
    completed, whether in this run or an earlier one, and print the metric."""
    from pyllm.tasks import get, run_jsonl

    adapter = get(task)
    tmp = None
    if output_path is None:
        tmp = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)
        tmp.close()
        output_path = Path(tmp.name)
    try:
        summary = run_jsonl(adapter, llm, input_path, output_path, options,
                            batch_size=batch_size,
                            progress=sys.stderr.isatty() if progress is None else progress)
        click.echo(summary.describe(), err=True)
        if evaluate is not None:
            pairs = _joined(input_path, output_path)
            if not pairs:
                raise click.ClickException("--eval: no completed records to score")
            metrics, text = evaluate(pairs)
            click.echo(json.dumps(metrics) if as_json else text)
    finally:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)


def _joined(input_path: Path, output_path: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(input record, result) for every id with a result line (error lines skipped)."""
    inputs: dict[str, dict[str, Any]] = {}
    with open(input_path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                inputs.setdefault(obj["id"], obj)
    pairs = []
    with open(output_path, encoding="utf-8") as f:
        for raw in f:
            try:
                res = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(res, dict) and "error" not in res and res.get("id") in inputs:
                pairs.append((inputs[res["id"]], res))
    return pairs


def print_single(result: Mapping[str, Any], as_json: bool,
                 text: Callable[[Mapping[str, Any]], str]) -> None:
    """One result: the JSON object with ``--json``, else ``text(result)``."""
    click.echo(json.dumps(result, ensure_ascii=False) if as_json else text(result))
