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


def read_records(path: Path) -> Iterator[JobRecord | BadRecord]:
    """Parse the input file line by line; never raises for a bad line."""
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
            has_prompt, has_messages = "prompt" in obj, "messages" in obj
            if has_prompt == has_messages:
                yield BadRecord(rid, line_no, rid, "invalid_record",
                                f"record {rid!r}: give exactly one of \"prompt\" or \"messages\"")
                continue
            prompt = obj["prompt"] if has_prompt else obj["messages"]
            problem = _check_prompt(prompt, has_prompt)
            if problem:
                yield BadRecord(rid, line_no, rid, "invalid_record", f"record {rid!r}: {problem}")
                continue
            overrides = {k: v for k, v in obj.items() if k not in RESERVED_FIELDS}
            yield JobRecord(rid, line_no, prompt, overrides)


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
