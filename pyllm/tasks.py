"""Tasks: what plugins register through ``register_tasks`` (classification, question answering
and translation come with the built-in ``pyllm_tasks`` plugin).

Every task is a :class:`pyllm.types.TaskAdapter`; this module finds them by name and runs them,
knowing none of them in particular::

    import pyllm, pyllm.tasks as tasks
    llm = pyllm.load()
    tasks.run(llm, "classify", "The match ended 2-1.", labels=["sport", "politics", "tech"])
    # {'label': 'sport', 'scores': {'sport': 0.91, 'politics': 0.04, 'tech': 0.05}}
    tasks.run(llm, "qa", {"context": context, "question": "Who founded it?"}, extractive=True)
    tasks.run(llm, "translate", ["Good morning.", "Thank you."], src="en", tgt="fr")

`run_jsonl` runs any task over a JSONL file with the batch-job rules of :mod:`pyllm.jobs`: one
output line per input record (`{"id", ...result}`, or an error line for a bad record), appended
as each batch finishes, and a re-run resumes where a killed run stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyllm.types import TaskAdapter

__all__ = ["get", "names", "read_task_records", "result_text", "run", "run_jsonl"]


def names() -> list[str]:
    """The registered task names."""
    from pyllm import plugins

    return sorted(plugins.tasks())


def get(name: str) -> TaskAdapter:
    """The task adapter registered under `name` (KeyError naming the known ones otherwise)."""
    from pyllm import plugins

    registry = plugins.tasks()
    if name not in registry:
        raise KeyError(
            f"no task named {name!r}; registered: {', '.join(sorted(registry)) or 'none'}"
        )
    return registry[name]


def as_record(adapter: TaskAdapter, value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A record for ``adapter.run``: a mapping as it is, a string as the task's one input field
    (a ValueError for a task with several fields)."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(
            f"task {adapter.name!r}: an input is a string or a record (a mapping "
            f"with {', '.join(map(repr, adapter.input_fields))}), got {value!r}"
        )
    fields = tuple(adapter.input_fields)
    if len(fields) != 1:
        raise ValueError(
            f"task {adapter.name!r} takes records with the fields "
            f"{', '.join(map(repr, fields))}, not a plain string"
        )
    return {fields[0]: value}


def run(
    llm: Any, name: str, inputs: str | Mapping[str, Any] | Sequence[Any], **options: Any
) -> Any:
    """Run the task registered as `name` on one input (a string for a task with one input
    field, or a record) or a list of them; one result dict, or a list for a list. The options
    are the task's own keyword arguments."""
    adapter = get(name)
    single = isinstance(inputs, (str, Mapping))
    items: list[Any] = [inputs] if single else list(inputs)
    out = adapter.run(llm, [as_record(adapter, i) for i in items], **options)
    return out[0] if single else out


def result_text(result: Mapping[str, Any]) -> str:
    """A task's result for a person to read: its one string value, else the JSON object."""
    if len(result) == 1:
        (value,) = result.values()
        if isinstance(value, str):
            return value
    return json.dumps(dict(result), ensure_ascii=False)


# ---------------------------------------------------------------------- JSONL jobs


@dataclass
class TaskRecord:
    key: str
    line: int
    fields: dict[str, Any]


def read_task_records(path: Path, required: Sequence[str]) -> Iterator[Any]:
    """TaskRecord per good line, pyllm.jobs.BadRecord per bad one (the rules of pyllm.jobs:
    a JSON object with a unique non-empty string "id" and a string for each required field)."""
    from pyllm.jobs import BadRecord, read_objects

    for item in read_objects(path):
        if isinstance(item, BadRecord):
            yield item
            continue
        n, rid, obj = item
        missing = [k for k in required if not isinstance(obj.get(k), str)]
        if missing:
            yield BadRecord(
                rid, n, "invalid_record", f"record {rid!r}: needs a string {missing[0]!r}"
            )
            continue
        yield TaskRecord(rid, n, obj)


@dataclass
class TaskJobSummary:
    total: int = 0
    skipped: int = 0  # already in the output from an earlier run
    completed: int = 0
    errors: int = 0  # records that failed in this run
    earlier_errors: int = 0  # failed in an earlier run and skipped (retry_errors runs them again)
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.completed / self.seconds if self.seconds > 0 else 0.0
        earlier = (
            f" ({self.earlier_errors} of them failed: --retry-errors runs them again)"
            if self.earlier_errors
            else ""
        )
        return (
            f"done: {self.completed} completed, {self.errors} errors, {self.skipped} already "
            f"done{earlier}, of {self.total} records in {self.seconds:.1f} s "
            f"({rate:.2f} records/s)"
        )


def run_jsonl(
    task: TaskAdapter | str,
    llm: Any,
    input_path: Path | str,
    output_path: Path,
    options: Mapping[str, Any],
    *,
    batch_size: int = 16,
    progress: bool = False,
    retry_errors: bool = False,
) -> TaskJobSummary:
    """Run a task over a JSONL file (see the module docstring): records in batches of
    `batch_size` through ``adapter.run(llm, records, **options)``; a batch that raises
    ValueError is retried one record at a time so that only the bad record gets an error line;
    `retry_errors` runs the records whose output line is an error again. `input_path` may be
    ``"-"`` (standard input) or a pipe: it is copied to a temporary file first, since the job
    reads it twice (to count the records, then to run them). An output that is the input file
    itself, or not a regular file, is refused (ValueError) before anything is read or written."""
    from pyllm.jobs import check_job_files, prepare_output, readable_input

    adapter = get(task) if isinstance(task, str) else task
    required = tuple(getattr(adapter, "input_fields", ("text",)))
    check_job_files(input_path, output_path)
    with readable_input(input_path) as source:
        state = prepare_output(output_path, retry_errors=retry_errors)
        summary = TaskJobSummary(earlier_errors=state.earlier_errors)
        summary.total = sum(1 for _ in read_task_records(source, required))
        start = time.monotonic()
        _run_records(
            adapter,
            llm,
            source,
            output_path,
            options,
            required,
            state.done,
            summary,
            batch_size=batch_size,
            progress=progress,
        )
    summary.seconds = time.monotonic() - start
    return summary


def _run_records(
    adapter: TaskAdapter,
    llm: Any,
    source: Path,
    output_path: Path,
    options: Mapping[str, Any],
    required: Sequence[str],
    done: set[Any],
    summary: TaskJobSummary,
    *,
    batch_size: int,
    progress: bool,
) -> None:
    """Run every record of `source` whose key is not in `done`, appending to `output_path`."""
    from tqdm import tqdm

    from pyllm.errors import ContextLengthError
    from pyllm.jobs import BadRecord, JsonlWriter, error_line

    bar = tqdm(total=summary.total, unit="rec", disable=not progress, desc=adapter.name)

    def run_batch(batch: list[TaskRecord], writer: JsonlWriter) -> None:
        try:
            results = adapter.run(llm, [r.fields for r in batch], **options)
        except (ValueError, ContextLengthError) as exc:
            if len(batch) > 1:  # find the bad record(s): one at a time
                for r in batch:
                    run_batch([r], writer)
                return
            kind = "context_length" if isinstance(exc, ContextLengthError) else "invalid_record"
            writer.write(error_line(batch[0].key, batch[0].line, kind, str(exc)))
            summary.errors += 1
            bar.update(1)
            return
        for r, res in zip(batch, results):
            writer.write({"id": r.key, **res})
            summary.completed += 1
        bar.update(len(batch))

    try:
        with JsonlWriter(output_path) as writer:
            batch: list[TaskRecord] = []
            for rec in read_task_records(source, required):
                if rec.key in done:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                if isinstance(rec, BadRecord):
                    writer.write(rec.to_json())
                    summary.errors += 1
                    bar.update(1)
                    continue
                batch.append(rec)
                if len(batch) >= batch_size:
                    run_batch(batch, writer)
                    batch = []
            if batch:
                run_batch(batch, writer)
    finally:
        bar.close()
