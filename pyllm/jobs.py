"""JSONL batch jobs that survive being killed: the file rules `pyllm generate` and the task jobs
share (what a record asks for is theirs: pyllm/generate_job.py, pyllm/tasks.py).

Input: one JSON object a line, each with an id: a non-empty string or an integer (written back as
its decimal string, so ``7`` and ``"7"`` are the same id). The file is read as bytes: a UTF-8 BOM
before the first line is skipped; a line that is not UTF-8, not JSON, nested deeper than
:data:`MAX_DEPTH` levels, not an object, or without a usable id becomes an error line and the job
goes on. Blank lines are skipped.

Output: one line per input record, appended as each finishes.

Keys. Every output line marks one key as done, in one of two spaces that cannot collide:

- a ``str``: the id of the record the line answers (its ``"id"``, or ``"custom_id"`` in OpenAI's
  batch format);
- an ``int``: the number of an input line that has no usable id (not UTF-8, not JSON, too deep, no
  id, a bad id, or an id an earlier line already used). Such error lines are
  ``{"id": null, "line": N, "error": {...}}``: an id appears in the output only on the line that
  answers its record, never on a duplicate's error.

So the record with the id ``"2"`` and input line 2 are different keys. (Files written before this
rule, whose ``duplicate_id`` / ``missing_id`` / ``invalid_json`` error lines carried the id, are
read by their ``"line"`` as well.)

Crash safety rests on three rules:
1. a key is done exactly when its complete line (ending in "\\n") is in the output file;
2. on start, a torn last line (a kill mid-write) is cut off, and every done key is skipped;
3. output is flushed and fsynced in small groups, so a kill loses at most the records of the last
   group, which the next run simply redoes — never a duplicate, never a gap.

Failed records: an error line marks its key as done, so a re-run does not redo it, unless the run
asks to retry errors: then the error lines are first removed from the output (a complete new copy
replaces the file, so a kill leaves either the old file or the new one) and their records run
again.

Files: input and output must be different files (compared by device and inode, so a symlink, a
hard link or ``./X`` is caught) and the output a regular file, new or existing, since a job reads
it back to resume (``/dev/stdout``, ``/dev/null``, a pipe or a terminal cannot be). An input that is
not a regular file (``-`` for standard input, a pipe) is copied to a temporary file first, since a
job reads its input twice: to count the records, then to run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Key = str | int  # a record's id, or the line number of a line without a usable id
MAX_DEPTH = 100  # deepest nesting of [ and { a record may have (json.loads recurses per level)
STDIN = "-"

_BOM = b"\xef\xbb\xbf"
# Error types whose lines were keyed by their line number although they carried an id (files
# written before error lines without a usable id got "id": null).
_LEGACY_LINE_KEYED = {"invalid_json", "missing_id", "duplicate_id"}


@dataclass
class BadRecord:
    """An input line or record that cannot run; it becomes an error line in the output.

    `key` is the record's id (str) when it has a usable one, else its line number (int)."""

    key: Key
    line: int
    error_type: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return error_line(self.key, self.line, self.error_type, self.message)


def error_line(key: Key, line: int, error_type: str, message: str) -> dict[str, Any]:
    """The output line for a failed record: ``"id"`` is the key when it is an id, else null."""
    return {
        "id": key if isinstance(key, str) else None,
        "line": line,
        "error": {"type": error_type, "message": message},
    }


# ---------------------------------------------------------------------- reading the input


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether `text` (a JSON value) nests arrays and objects more than `limit` levels deep,
    found without parsing (so without recursion): brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= limit:
        return False  # too few brackets to be that deep: skip the scan
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def parse_line(raw: bytes, line_no: int) -> dict[str, Any] | BadRecord | None:
    """One input line: its object, a BadRecord keyed by the line number, or None when blank."""
    if line_no == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return BadRecord(
            line_no,
            line_no,
            "invalid_utf8",
            f"line {line_no}: not UTF-8 (byte {exc.start + 1} is "
            f"{raw[exc.start : exc.start + 1]!r})",
        )
    if not text:
        return None
    if too_deep(text):
        return BadRecord(
            line_no,
            line_no,
            "too_deep",
            f"line {line_no}: nested more than {MAX_DEPTH} levels deep (arrays and objects)",
        )
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, a 5,000-digit int
        return BadRecord(line_no, line_no, "invalid_json", f"line {line_no}: {exc}")
    if not isinstance(obj, dict):
        return BadRecord(
            line_no,
            line_no,
            "invalid_record",
            f"line {line_no}: expected a JSON object, got {json_type(obj)}",
        )
    return obj


def read_objects(
    path: Path, id_fields: Sequence[str] = ("id",)
) -> Iterator[tuple[int, str, dict[str, Any]] | BadRecord]:
    """The shared JSONL rules: `(line, id, object)` for a JSON object with a unique usable id (the
    first of `id_fields` it has), a BadRecord for anything else. Never raises for a bad line."""
    seen: dict[str, int] = {}
    names = " or ".join(f'"{f}"' for f in id_fields)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            obj = parse_line(raw, line_no)
            if obj is None or isinstance(obj, BadRecord):
                if obj is not None:
                    yield obj
                continue
            name = next((f for f in id_fields if f in obj), id_fields[0])
            value = obj.get(name)
            if value is None:
                yield BadRecord(
                    line_no, line_no, "missing_id", f"line {line_no}: every record needs an {names}"
                )
                continue
            rid = record_id(value)
            if rid is None:
                yield BadRecord(
                    line_no,
                    line_no,
                    "invalid_id",
                    f'line {line_no}: "{name}" must be a non-empty string or an '
                    f"integer, got {json_type(value)} {_short(value)}",
                )
                continue
            if rid in seen:
                yield BadRecord(
                    line_no,
                    line_no,
                    "duplicate_id",
                    f"line {line_no}: id {rid!r} was already used on line {seen[rid]}",
                )
                continue
            seen[rid] = line_no
            yield line_no, rid, obj


def record_id(value: Any) -> str | None:
    """A usable id as the string it is known by (an integer's decimal digits), else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def json_type(value: Any) -> str:
    """A JSON value's type in words ("an object", "a number", ...), for error messages."""
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- reading the output


def output_key(obj: Any) -> Key | None:
    """The key an output line marks as done (None if the line is not one of ours)."""
    if not isinstance(obj, dict):
        return None
    if "custom_id" in obj:  # OpenAI's batch output format
        cid = obj["custom_id"]
        return cid if isinstance(cid, str) and cid else None
    rid, line = obj.get("id"), obj.get("line")
    if "error" in obj:
        err = obj["error"]
        legacy = isinstance(err, dict) and err.get("type") in _LEGACY_LINE_KEYED
        if isinstance(rid, str) and rid and not legacy:
            return rid
        return line if isinstance(line, int) and not isinstance(line, bool) else None
    return rid if isinstance(rid, str) and rid else None


def is_error_line(obj: dict[str, Any]) -> bool:
    """Whether an output line records a failure (pyllm's `"error"`, or OpenAI's non-null
    `"error"` / a response whose status is not 200)."""
    if "custom_id" in obj:
        response = obj.get("response")
        ok = isinstance(response, dict) and response.get("status_code") == 200
        return obj.get("error") is not None or not ok
    return "error" in obj


def _line_key(raw: bytes) -> tuple[Key, bool] | None:
    """(key, is an error) of one output line; None for a line that is not one of ours."""
    try:
        text = raw.decode("utf-8")
        if too_deep(text, MAX_DEPTH + 8):  # ours add a few levels to a record
            return None
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    key = output_key(obj)
    return None if key is None else (key, is_error_line(obj))


def _cut_torn_line(path: Path) -> bytes:
    """Cut a torn last line (a kill mid-write) off the file; return the complete lines."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end]


def repair_and_scan(path: Path) -> set[Key]:
    """Cut a torn last line off the output file and return the keys already done (failed ones
    included)."""
    if not path.exists():
        return set()
    keys = (_line_key(raw) for raw in _cut_torn_line(path).splitlines())
    return {k[0] for k in keys if k is not None}


@dataclass
class OutputState:
    """What an output file already holds, as a run starts."""

    done: set[Key] = field(default_factory=set)  # keys to skip
    earlier_errors: int = 0  # of them, keys whose only line is an error line
    retried: int = 0  # error lines removed so that their records run again


def prepare_output(path: Path, *, retry_errors: bool = False) -> OutputState:
    """Repair the output file (a torn last line) and read which keys are done; with
    `retry_errors`, first remove the error lines (an atomic replace) so their records run again."""
    state = OutputState()
    if not path.exists():
        return state
    data = _cut_torn_line(path)
    lines = data.splitlines(keepends=True)
    keys = [_line_key(raw) for raw in lines]
    succeeded = {k[0] for k in keys if k is not None and not k[1]}
    failed = {k[0] for k in keys if k is not None and k[1]} - succeeded
    if retry_errors and any(k is not None and k[1] for k in keys):
        kept = [raw for raw, k in zip(lines, keys) if k is None or not k[1]]
        _replace_contents(path, b"".join(kept))
        state.retried = len(lines) - len(kept)
        state.done = succeeded
    else:
        state.done = succeeded | failed
        state.earlier_errors = len(failed)
    return state


def _replace_contents(path: Path, data: bytes) -> None:
    """Give `path` (a symlink's target, when it is one) these contents, all or nothing."""
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------- the two files


def check_job_files(input_path: Path | str, output_path: Path) -> None:
    """Refuse, before anything is written, an output that is not a regular file (new or
    existing) and an output that is the input file itself (by device and inode)."""
    supported = (
        "a job's output must be a regular file (new or existing), since the job "
        "appends to it and reads it back to resume; write to a file and copy or print "
        "it afterwards"
    )
    if os.path.abspath(output_path).startswith(_STREAM_PATHS):  # a regular file when redirected
        raise ValueError(f"the output {output_path} is a stream, not a file: {supported}")
    try:
        out = os.stat(output_path)
    except FileNotFoundError:
        return  # a new file: it cannot be the input
    if not stat.S_ISREG(out.st_mode):
        raise ValueError(f"the output {output_path} is {_file_kind(out.st_mode)}: {supported}")
    if str(input_path) == STDIN:
        try:
            src = os.fstat(sys.stdin.fileno())
        except (AttributeError, OSError, ValueError):
            return  # no real descriptor (tests, an embedded host)
    else:
        src = os.stat(input_path)
    if (src.st_dev, src.st_ino) == (out.st_dev, out.st_ino):
        where = "standard input" if str(input_path) == STDIN else f"the input {input_path}"
        raise ValueError(
            f"{where} and the output {output_path} are the same file: the output "
            f"gets one line per finished record and is read back to resume, so it "
            f"must be another file"
        )


_STREAM_PATHS = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


@contextmanager
def readable_input(input_path: Path | str) -> Iterator[Path]:
    """The input as a regular file that can be read twice: ``-`` (standard input), a pipe or a
    device is copied to a temporary file first (removed afterwards)."""
    if str(input_path) != STDIN and stat.S_ISREG(os.stat(input_path).st_mode):
        yield Path(input_path)
        return
    fd, tmp = tempfile.mkstemp(prefix="pyllm-input-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as dst:
            if str(input_path) == STDIN:
                if sys.stdin is None or sys.stdin.isatty():
                    raise ValueError(
                        "the input is standard input (-), which is a terminal: "
                        "pipe or redirect the JSONL into it"
                    )
                shutil.copyfileobj(sys.stdin.buffer, dst)
            else:
                with open(input_path, "rb") as src:
                    shutil.copyfileobj(src, dst)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------- writing


class JsonlWriter:
    """Appends complete lines; flushes and fsyncs every `group` lines or `interval` seconds."""

    def __init__(self, path: Path, group: int = 8, interval: float = 1.0) -> None:
        self._f = open(path, "ab")  # noqa: SIM115 - open across writes; close() closes it
        self._group, self._interval = group, interval
        self._pending = 0
        self._last_sync = time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        try:
            data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the input): escape it
            data = (json.dumps(obj) + "\n").encode("ascii")
        # One write call per complete line: a kill leaves at most one torn line, at the end.
        self._f.write(data)
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

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
