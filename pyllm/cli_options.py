"""Public helpers for the commands a plugin adds (``register_commands``): the options every
model command shares, and the one-text-or-a-JSONL-file shape of the task commands.

This module and :mod:`pyllm.types` are what a plugin's command may build on (docs/plugins.md):

- :func:`device_option` / :func:`resolve_device`, :func:`int8_option`, :func:`kv_dtype_option`,
  :func:`sampling_options` / :func:`pop_sampling_params`: the flags of pyllm's own commands;
- :func:`load_options`: ``--int8/--exact``, ``--kv-dtype``, ``--device`` and ``--ctx``, the
  way a command loads its model (:func:`load_llm` takes their values);
- :func:`input_options` (a decorator: ``-m/--model``, ``-i/-o``, ``--retry-errors``,
  ``--json``, ``--eval``, ``--batch-size``, ``--progress`` and the load options; the command
  receives them as the arguments ``model``, ``input_path``, ``output_path``, ``retry_errors``,
  ``as_json``, ``evaluate``, ``batch_size``, ``progress``, ``int8``, ``kv_dtype``, ``device``,
  ``ctx``; :func:`task_input_options` leaves ``--eval`` out), :func:`check_io`,
  :func:`text_argument`, :func:`load_llm`, :func:`run_file`, :func:`print_single`: a task
  command. A single input prints the result (``--json``: the result object on one line). A JSONL
  file runs through :func:`pyllm.tasks.run_jsonl` (the batch-job rules of :mod:`pyllm.jobs`:
  error lines for bad records, resume on re-run, ``-i -`` for standard input, the output never
  the input file), and the command exits with status :data:`EXIT_RECORDS_FAILED` when a record
  failed in this run (:data:`JOB_HELP` says so in a command's help). ``--eval`` scores the
  output against the gold field of each input record and prints the metric (``--json``: as one
  JSON object).

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
    EXIT_RECORDS_FAILED,
    device_option,
    int8_option,
    kv_dtype_option,
    load_options,
    pop_sampling_params,
    resolve_device,
    sampling_options,
)

__all__ = [
    "EXIT_RECORDS_FAILED",
    "JOB_HELP",
    "check_io",
    "device_option",
    "input_options",
    "int8_option",
    "kv_dtype_option",
    "load_llm",
    "load_options",
    "pop_sampling_params",
    "print_single",
    "resolve_device",
    "run_file",
    "sampling_options",
    "task_input_options",
    "text_argument",
]

# The end of a task command's --help: what -i reads, resuming, and the exit status of a job.
JOB_HELP = """\b
-i - reads standard input; the output must be a regular file other than the input. Re-running
with the same -o resumes: finished records (failed ones too) are skipped; --retry-errors runs
the failed ones again.

\b
Exit status: 0 done (every record of -i ran); 3 some records failed in this run (see their
error lines); 2 bad usage or files.
"""


def input_options(f: Any) -> Any:
    """-i/-o, --retry-errors, --model, --json, --eval, --batch-size, --progress and
    :func:`load_options` (--int8, --kv-dtype, --device, --ctx)."""
    return task_input_options(evaluate=True)(f)


def task_input_options(evaluate: bool = True) -> Callable[[Any], Any]:
    """The options of :func:`input_options`; ``evaluate=False`` leaves ``--eval`` out (the
    command then receives no ``evaluate`` argument)."""

    def decorate(f: Any) -> Any:
        f = load_options()(f)
        f = click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bar for -i (default: when stderr is a terminal).",
        )(f)
        f = click.option(
            "--batch-size",
            type=click.IntRange(1, 1024),
            default=16,
            show_default=True,
            help="Records run together (-i).",
        )(f)
        if evaluate:
            f = click.option(
                "--eval",
                "evaluate",
                is_flag=True,
                help="With -i: score the results against each record's gold field "
                "and print the metric.",
            )(f)
        f = click.option(
            "--retry-errors",
            is_flag=True,
            help="With -i: run again the records whose output line is an error "
            "(that line is removed).",
        )(f)
        return _io_options(f)

    return decorate


def _io_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(f)
    f = click.option(
        "-o",
        "--output",
        "output_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Output JSONL (appended; a re-run resumes).",
    )(f)
    f = click.option(
        "-i",
        "--input",
        "input_path",
        type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
        help='Input JSONL, one record a line with an "id" (- for standard input).',
    )(f)
    f = click.option(
        "--model",
        "-m",
        default=None,
        help="Model name, alias, .gguf path or Hugging Face folder  [default: the "
        "one `pyllm models default` set, else smollm2]",
    )(f)
    return f


def load_llm(
    model: str | None,
    device: str = "auto",
    *,
    int8: bool = False,
    kv_dtype: str = "float32",
    ctx: int | None = None,
) -> Any:
    """The model for a command: ``pyllm.load`` with the values of :func:`load_options`."""
    from pyllm.cli import options

    return options.load_llm(model, int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx)


def text_argument(text: str | None, what: str = "TEXT") -> str:
    """The TEXT argument, or standard input when it is a pipe (`-` reads it too)."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise click.UsageError(f"give {what}, or -i IN.jsonl")
        return sys.stdin.read()
    return text


def check_io(
    input_path: Path | None, output_path: Path | None, evaluate: bool, has_single: bool
) -> None:
    """Usage errors for a task command's mix of a single input, -i, -o and --eval, and the
    files a job refuses (the output is the input, or not a regular file), before the model
    loads."""
    from pyllm.jobs import check_job_files

    if input_path is not None and has_single:
        raise click.UsageError("give either a single input or -i IN.jsonl, not both")
    if input_path is None and (output_path is not None or evaluate):
        raise click.UsageError("-o and --eval need -i IN.jsonl")
    if input_path is not None and output_path is None and not evaluate:
        raise click.UsageError("-i needs -o OUT.jsonl (or --eval)")
    if input_path is not None and output_path is not None:
        try:
            check_job_files(input_path, output_path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None


def run_file(
    task: str,
    llm: Any,
    input_path: Path,
    output_path: Path | None,
    options: Mapping[str, Any],
    *,
    batch_size: int,
    progress: bool | None,
    evaluate: Callable[[list[tuple[dict[str, Any], dict[str, Any]]]], tuple[dict[str, Any], str]]
    | None,
    as_json: bool,
    retry_errors: bool = False,
) -> None:
    """Run a JSONL job (``-`` reads standard input); with `evaluate`, score every (input record,
    output line) pair that completed, whether in this run or an earlier one, and print the
    metric. Exits with status :data:`EXIT_RECORDS_FAILED` when a record failed in this run."""
    from pyllm.jobs import check_job_files, readable_input
    from pyllm.tasks import get, run_jsonl

    adapter = get(task)
    tmp = None
    if output_path is None:
        tmp = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)  # noqa: SIM115 - closed at once, only its name is used
        tmp.close()
        output_path = Path(tmp.name)
    try:
        check_job_files(input_path, output_path)
        with readable_input(input_path) as source:  # read twice below: standard input is copied
            summary = run_jsonl(
                adapter,
                llm,
                source,
                output_path,
                options,
                batch_size=batch_size,
                retry_errors=retry_errors,
                progress=sys.stderr.isatty() if progress is None else progress,
            )
            click.echo(summary.describe(), err=True)
            if evaluate is not None:
                pairs = _joined(source, output_path)
                if not pairs:
                    raise click.ClickException("--eval: no completed records to score")
                metrics, text = evaluate(pairs)
                click.echo(json.dumps(metrics) if as_json else text)
    finally:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
    if summary.errors:
        raise click.exceptions.Exit(EXIT_RECORDS_FAILED)


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


def print_single(
    result: Mapping[str, Any], as_json: bool, text: Callable[[Mapping[str, Any]], str]
) -> None:
    """One result: the JSON object with ``--json``, else ``text(result)``."""
    click.echo(json.dumps(result, ensure_ascii=False) if as_json else text(result))
