"""Tasks: classification, question answering, translation (and whatever plugins add).

Every task is a :class:`pyllm.types.TaskAdapter` registered by a plugin through
``register_tasks``; the built-ins live in ``plugins/pyllm_tasks``. This module finds them by name
and offers one-call helpers for the Python API::

    import pyllm, pyllm.tasks as tasks
    llm = pyllm.load()
    tasks.classify(llm, "The match ended 2-1.", ["sport", "politics", "tech"])
    # {'label': 'sport', 'scores': {'sport': 0.91, 'politics': 0.04, 'tech': 0.05}}
    tasks.answer(llm, context, "Who founded the company?", extractive=True)
    tasks.translate(llm, "Good morning.", "en", "fr")
    tasks.get("sentiment").run(llm, [{"text": "I loved it"}])   # a plugin's task

`run_jsonl` runs any task over a JSONL file with the batch-job rules of :mod:`pyllm.jobs`: one
output line per input record (`{"id", ...result}`, or an error line for a bad record), appended
as each batch finishes, and a re-run resumes where a killed run stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyllm.types import TaskAdapter

__all__ = ["get", "names", "classify", "answer", "translate", "run_jsonl", "read_task_records"]


def names() -> list[str]:
    """The registered task names."""
    from pyllm import plugins

    return sorted(plugins.tasks())


def get(name: str) -> TaskAdapter:
    """The task adapter registered under `name` (KeyError naming the known ones otherwise)."""
    from pyllm import plugins

    registry = plugins.tasks()
    if name not in registry:
        raise KeyError(f"no task named {name!r}; registered: {', '.join(sorted(registry)) or 'none'}")
    return registry[name]


def classify(llm: Any, text: str | Sequence[str], labels: str | Sequence[str], *,
             examples: Sequence[Any] = (), calibrate: bool = True, multi_label: bool = False,
             threshold: float = 0.5, normalize: bool = False, instruction: str | None = None
             ) -> Any:
    """``{"label", "scores": {label: probability}}`` for a text (a list for a list of texts).

    `labels`: a list or a comma-separated string; `examples`: few-shot ``(text, label)`` pairs
    or ``{"text", "label"}`` mappings; `calibrate`: contextual calibration (default on);
    `multi_label`: every label whose probability reaches `threshold` (in ``"labels"``);
    `normalize`: mean instead of summed token log-probs; `instruction`: replaces the default
    instruction.
    """
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    out = get("classify").run(llm, [{"text": t} for t in texts], labels=labels,
                              examples=examples, calibrate=calibrate, multi_label=multi_label,
                              threshold=threshold, normalize=normalize,
                              instruction=instruction)
    return out[0] if single else out


def answer(llm: Any, context: str, question: str | Sequence[str], *, extractive: bool = False,
           max_tokens: int = 64) -> Any:
    """``{"answer"}`` (extractive: with ``"start"``, ``"end"`` character offsets into
    `context`) for a question (a list for a list of questions about the same context)."""
    single = isinstance(question, str)
    qs = [question] if single else list(question)
    out = get("qa").run(llm, [{"context": context, "question": q} for q in qs],
                        extractive=extractive, max_tokens=max_tokens)
    return out[0] if single else out


def translate(llm: Any, text: str | Sequence[str], src: str | None, tgt: str, *,
              max_chunk_tokens: int = 200) -> Any:
    """The translation of a text (a list for a list of texts) from `src` to `tgt` (codes like
    ``en`` or names like ``English``; `src` None: not named in the prompt)."""
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    out = get("translate").run(llm, [{"text": t} for t in texts], src=src, tgt=tgt,
                               max_chunk_tokens=max_chunk_tokens)
    res = [o["translation"] for o in out]
    return res[0] if single else res


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
            yield BadRecord(rid, n, "invalid_record", f"record {rid!r}: needs a string {missing[0]!r}")
            continue
        yield TaskRecord(rid, n, obj)


@dataclass
class TaskJobSummary:
    total: int = 0
    skipped: int = 0
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.completed / self.seconds if self.seconds > 0 else 0.0
        return (f"done: {self.completed} completed, {self.errors} errors, {self.skipped} already "
                f"done, of {self.total} records in {self.seconds:.1f} s ({rate:.2f} records/s)")


def run_jsonl(task: TaskAdapter | str, llm: Any, input_path: Path, output_path: Path,
              options: Mapping[str, Any], *, batch_size: int = 16,
              progress: bool = False, retry_errors: bool = False) -> TaskJobSummary:
    """Run a task over a JSONL file (see the module docstring): records in batches of
    `batch_size` through ``adapter.run(llm, records, **options)``; a batch that raises
    ValueError is retried one record at a time so that only the bad record gets an error line;
    `retry_errors` runs the records whose output line is an error again."""
    from tqdm import tqdm

    from pyllm.errors import ContextLengthError
    from pyllm.jobs import BadRecord, JsonlWriter, check_job_files, error_line, prepare_output

    adapter = get(task) if isinstance(task, str) else task
    required = tuple(getattr(adapter, "input_fields", ("text",)))
    summary = TaskJobSummary()
    check_job_files(input_path, output_path)
    done = prepare_output(output_path, retry_errors=retry_errors).done
    summary.total = sum(1 for _ in read_task_records(input_path, required))
    start = time.monotonic()
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
            for rec in read_task_records(input_path, required):
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
    summary.seconds = time.monotonic() - start
    return summary
