"""What `pyllm classify | qa | translate` share: one text or a JSONL file, --json, --eval.

A single input prints the result (``--json``: the result object on one line). A JSONL file runs
through :func:`pyllm.tasks.run_jsonl` (the batch-job rules of :mod:`pyllm.jobs`: error lines for
bad records, resume on re-run). ``--eval`` scores the output against the gold field of each input
record and prints the metric (``--json``: as one JSON object).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click


def input_options(f: Any) -> Any:
    """-i/-o, --model, --device, --json, --eval, --batch-size, --progress."""
    from pyllm.cli.options import device_option

    f = device_option()(f)
    f = click.option("--progress/--no-progress", default=None,
                     help="Progress bar for -i (default: when stderr is a terminal).")(f)
    f = click.option("--batch-size", type=click.IntRange(1, 1024), default=16,
                     show_default=True, help="Records run together (-i).")(f)
    f = click.option("--eval", "evaluate", is_flag=True,
                     help="With -i: score the results against each record's gold field and "
                          "print the metric.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(f)
    f = click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Output JSONL (appended; a re-run resumes).")(f)
    f = click.option("-i", "--input", "input_path",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Input JSONL, one record a line with an \"id\".")(f)
    f = click.option("--model", "-m", default="smollm2", show_default=True,
                     help="Model name, .gguf path or Hugging Face folder.")(f)
    return f


def load_llm(model: str, device: str = "auto") -> Any:
    import pyllm
    from pyllm.cli.options import resolve_device

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


def print_single(result: Mapping[str, Any], as_json: bool, text: Callable[[Mapping[str, Any]], str]) -> None:
    click.echo(json.dumps(result, ensure_ascii=False) if as_json else text(result))
