"""Rows of a batch -> the records `pyllm generate` would read from the same JSONL lines.

A row is either one `record` column holding a line's JSON text (how the Ray job ships records:
the driver has already checked their ids and numbered their lines) or the record's fields as
columns (`id`, `prompt` or `messages`, sampling fields...; how a Spark or Dask table holds them).
Each becomes the JSON object of a line; the objects are then read by pyllm/generate_job.py's own
`read_records`, so a record that arrives in a batch is checked, and later answered, exactly as
the same line in a file would be (pyllm's format or OpenAI's batch format alike). A row's `line`
column, when present, is the line number its error record names.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_COLUMN = "record"
LINE_COLUMN = "line"
OUTPUT_COLUMNS = ("result", "text", "finish_reason", "completion_tokens", "error")


def parse_rows(rows: list[dict[str, Any]]) -> list[Any]:
    """One `generate_job.JobRecord` or `jobs.BadRecord` per row, in order."""
    from pyllm.generate_job import read_records

    lines = [_line_text(row) for row in rows]
    numbers: list[int] = [
        row[LINE_COLUMN] if _is_int(row.get(LINE_COLUMN)) else i + 1 for i, row in enumerate(rows)
    ]
    fd, tmp = tempfile.mkstemp(prefix="pyllm-batch-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            # A blank line keeps the numbering of a row with nothing to read (read_records skips it
            # and yields nothing, so such a row is answered below).
            f.write(b"".join(text.encode("utf-8", "surrogatepass") + b"\n" for text in lines))
        parsed: dict[int, Any] = {}
        for rec in read_records(Path(tmp)):
            parsed[rec.line - 1] = rec
    finally:
        Path(tmp).unlink(missing_ok=True)
    from pyllm.jobs import BadRecord

    out: list[Any] = []
    for i, number in enumerate(numbers):
        found = parsed.get(i)
        if found is None:
            out.append(
                BadRecord(number, number, "invalid_record", f"line {number}: an empty record")
            )
        else:
            _renumber(found, i + 1, number)
            out.append(found)
    return out


def _line_text(row: dict[str, Any]) -> str:
    if RECORD_COLUMN in row:
        value = row[RECORD_COLUMN]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        return text.replace("\n", " ")  # raw newlines sit only between JSON tokens
    fields = {k: v for k, v in row.items() if k != LINE_COLUMN and k not in OUTPUT_COLUMNS}
    return json.dumps(fields, ensure_ascii=False, default=str)


def _renumber(rec: Any, temp_line: int, line: int) -> None:
    """Give a record (and its message) the input's line number instead of the batch file's."""
    if getattr(rec, "key", None) == temp_line:
        rec.key = line
    rec.line = line
    message = getattr(rec, "message", None)
    prefix = f"line {temp_line}:"
    if isinstance(message, str) and message.startswith(prefix):
        rec.message = f"line {line}:" + message[len(prefix) :]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
