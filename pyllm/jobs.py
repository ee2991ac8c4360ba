"""JSONL batch jobs that survive being killed.

Input: one JSON object a line, `{"id": str, "prompt": str}` or `{"id": str, "messages": [...]}`,
with optional sampling fields (any `SamplingParams` name). Output: one line per input record,
appended as each finishes: `{"id", "text", "token_ids", "finish_reason", "usage"}` or, for a bad
record, `{"id", "line", "error": {"type", "message"}}`.

Crash safety rests on three rules:
1. a record is done exactly when its complete line (ending in "\\n") is in the output file;
2. on start, a torn last line (a kill mid-write) is cut off, and every done key is skipped;
3. output is flushed and fsynced in small groups, so a kill loses at most the records of the last
   group, which the next run simply redoes — never a duplicate, never a gap.
Bad records are keyed by their line number (`line:N`), good ones by their id.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

RESERVED_FIELDS = {"id", "prompt", "messages"}


@dataclass
class JobRecord:
    """One valid input record, ready to run."""

    key: str
    line: int
    prompt: Any  # str or list of messages
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BadRecord:
    """An input line that cannot run; it becomes an error line in the output."""

    key: str
    line: int
    record_id: Any
    error_type: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.record_id, "line": self.line,
                "error": {"type": self.error_type, "message": self.message}}


def error_line(record_id: Any, line: int, error_type: str, message: str) -> dict[str, Any]:
    return BadRecord(f"line:{line}", line, record_id, error_type, message).to_json()


def output_key(obj: dict[str, Any]) -> str | None:
    """The key an output line marks as done (None if the line is not one of ours)."""
    if not isinstance(obj, dict):
        return None
    if "error" in obj:
        if isinstance(obj.get("id"), str) and obj.get("error", {}).get("type") not in _LINE_KEYED:
            return obj["id"]
        return f"line:{obj.get('line')}"
    return obj["id"] if isinstance(obj.get("id"), str) else None


# Errors that make the id unusable as a key (no id, a bad id, or a repeated one).
_LINE_KEYED = {"invalid_json", "missing_id", "duplicate_id"}


def read_objects(path: Path) -> Iterator[tuple[int, str, dict[str, Any]] | BadRecord]:
    """The shared JSONL rules: `(line, id, object)` for a JSON object with a unique non-empty
    string "id", a BadRecord for anything else. Never raises for a bad line."""
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield BadRecord(f"line:{line_no}", line_no, None, "invalid_json", f"line {line_no}: {exc}")
                continue
            if not isinstance(obj, dict):
                yield BadRecord(f"line:{line_no}", line_no, None, "invalid_record",
                                f"line {line_no}: expected a JSON object, got {type(obj).__name__}")
                continue
            rid = obj.get("id")
            if not isinstance(rid, str) or not rid:
                yield BadRecord(f"line:{line_no}", line_no, rid, "missing_id",
                                f"line {line_no}: every record needs a non-empty string \"id\"")
                continue
            if rid in seen:
                yield BadRecord(f"line:{line_no}", line_no, rid, "duplicate_id",
                                f"line {line_no}: id {rid!r} already appeared earlier in the input")
                continue
            seen.add(rid)
            yield line_no, rid, obj


def read_records(path: Path) -> Iterator[JobRecord | BadRecord]:
    """Generation records (a "prompt" or "messages" each); never raises for a bad line."""
    for item in read_objects(path):
        yield item if isinstance(item, BadRecord) else generation_record(*item)


def generation_record(line_no: int, rid: str, obj: dict[str, Any]) -> JobRecord | BadRecord:
    """One object with a usable id -> a JobRecord, or a BadRecord naming what is wrong with its
    prompt (also used for records that arrive as table rows: pyllm.distributed)."""
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        return BadRecord(rid, line_no, rid, "invalid_record",
                         f"record {rid!r}: give exactly one of \"prompt\" or \"messages\"")
    prompt = obj["prompt"] if has_prompt else obj["messages"]
    problem = _check_prompt(prompt, has_prompt)
    if problem:
        return BadRecord(rid, line_no, rid, "invalid_record", f"record {rid!r}: {problem}")
    overrides = {k: v for k, v in obj.items() if k not in RESERVED_FIELDS}
    return JobRecord(rid, line_no, prompt, overrides)


def _check_prompt(prompt: Any, is_text: bool) -> str | None:
    if is_text:
        return None if isinstance(prompt, str) else "\"prompt\" must be a string"
    if not isinstance(prompt, list) or not prompt:
        return "\"messages\" must be a non-empty list"
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"messages[{i}] must be an object with string \"role\" and \"content\""
    return None


def repair_and_scan(path: Path) -> set[str]:
    """Cut a torn last line off the output file and return the keys already done."""
    done: set[str] = set()
    if not path.exists():
        return done
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):  # a kill mid-write left a partial line: drop it
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    for raw in data[:end].splitlines():
        try:
            key = output_key(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if key is not None:
            done.add(key)
    return done


class JsonlWriter:
    """Appends complete lines; flushes and fsyncs every `group` lines or `interval` seconds."""

    def __init__(self, path: Path, group: int = 8, interval: float = 1.0) -> None:
        self._f = open(path, "a", encoding="utf-8")
        self._group, self._interval = group, interval
        self._pending = 0
        self._last_sync = time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        # One write call per complete line: a kill leaves at most one torn line, at the end.
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._pending += 1
        if self._pending >= self._group or time.monotonic() - self._last_sync >= self._interval:
            self.sync()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- running a job


@dataclass
class JobSummary:
    total: int = 0
    skipped: int = 0      # already in the output from an earlier run
    completed: int = 0
    errors: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def describe(self) -> str:
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        state = "interrupted (re-run the same command to resume)" if self.interrupted else "done"
        return (f"{state}: {self.completed} completed, {self.errors} errors, {self.skipped} "
                f"already done, of {self.total} records; {self.generated_tokens} tokens in "
                f"{self.seconds:.1f} s ({rate:.1f} tokens/s)")


def result_line(key: str, prompt_ids: list[int], completions: list[Any]) -> dict[str, Any]:
    first = completions[0]
    line: dict[str, Any] = {
        "id": key, "text": first.text, "token_ids": first.token_ids,
        "finish_reason": first.finish_reason,
        "usage": {"prompt_tokens": len(prompt_ids),
                  "completion_tokens": sum(len(c.token_ids) for c in completions)},
    }
    if len(completions) > 1:
        line["outputs"] = [{"text": c.text, "token_ids": c.token_ids,
                            "finish_reason": c.finish_reason} for c in completions]
    return line


def run_job(input_path: Path, output_path: Path, *, model: Any, base_params: Any,
            max_num_seqs: int = 64, progress: bool = False, int8_activations: bool = False,
            kv_dtype: str = "float32", device: str = "cpu") -> JobSummary:
    """Run (or resume) a JSONL job. `model` is a name/path or a loaded `pyllm.LLM`
    (`int8_activations`, `kv_dtype` and `device` apply when it is a name or path: see
    `pyllm.load`)."""
    import signal

    from tqdm import tqdm

    from pyllm.engine.llm_engine import LLMEngine
    from pyllm.errors import ContextLengthError
    from pyllm.sampling_params import SamplingParams

    summary = JobSummary()
    done = repair_and_scan(output_path)
    summary.total = sum(1 for _ in read_records(input_path))
    if isinstance(model, (str, Path)) or model is None:
        import pyllm

        llm = pyllm.load(model, device, int8_activations=int8_activations, kv_dtype=kv_dtype)
    else:
        llm = model
    engine = LLMEngine(llm.model, llm.tokenizer, llm.engine_config(max_num_seqs=max_num_seqs))
    interrupted = {"flag": False}

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted["flag"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    start = time.monotonic()
    prompts: dict[str, list[int]] = {}
    partial: dict[str, dict[int, Any]] = {}
    n_of: dict[str, int] = {}
    bar = tqdm(total=summary.total, unit="rec", disable=not progress, dynamic_ncols=True,
               desc="generate")
    try:
        with JsonlWriter(output_path) as writer:

            def requests() -> Iterator[tuple[str, list[int], Any]]:
                for rec in read_records(input_path):
                    if interrupted["flag"]:
                        return
                    if rec.key in done:
                        summary.skipped += 1
                        bar.update(1)
                        continue
                    if isinstance(rec, BadRecord):
                        writer.write(rec.to_json())
                        summary.errors += 1
                        bar.update(1)
                        continue
                    try:
                        params = SamplingParams.from_mapping(rec.overrides, base=base_params)
                        ids = llm.encode_prompt(rec.prompt)
                        engine.check_request(ids, params)
                    except (ValueError, TypeError, ContextLengthError) as exc:
                        kind = "context_length" if isinstance(exc, ContextLengthError) else "invalid_record"
                        writer.write(error_line(rec.key, rec.line, kind, str(exc)))
                        summary.errors += 1
                        bar.update(1)
                        continue
                    prompts[rec.key], n_of[rec.key] = ids, params.n
                    yield rec.key, ids, params

            for event in engine.run(requests(), lookahead=2 * max_num_seqs):
                if event.finished:
                    summary.generated_tokens += len(event.completion.token_ids)
                    got = partial.setdefault(event.request, {})
                    got[event.output] = event.completion
                    if len(got) == n_of[event.request]:
                        key = event.request
                        writer.write(result_line(key, prompts.pop(key),
                                                 [got[i] for i in sorted(got)]))
                        del partial[key]
                        summary.completed += 1
                        bar.update(1)
                        elapsed = time.monotonic() - start
                        bar.set_postfix_str(f"{summary.generated_tokens / max(elapsed, 1e-9):.1f} tok/s")
                if interrupted["flag"]:
                    break
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    summary.interrupted = interrupted["flag"]
    summary.seconds = time.monotonic() - start
    return summary
