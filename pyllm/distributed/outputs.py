"""Where a distributed job's output records go, and which keys are already there.

Only the driver writes, and it writes each key once: the keys already in the output when the run
starts, and every key written since, are remembered, so a result that reaches the driver twice
(a task Ray ran again after a worker died) is dropped, never written twice.

- A local path (not ending in `.parquet`): one JSONL file, the very file `pyllm generate` writes
  (appended line by line, a torn last line repaired on start), so a run started on one machine
  can be resumed on a cluster and the other way round.
- A URL (`s3://bucket/out/`) or a name ending in `.parquet`: a folder of part files
  (`part-<run>-<n>.jsonl` or `.parquet`) each written whole, under a temporary name first and
  then moved into place, so a part is either all there or absent. The results not yet in a part
  when the driver is killed (at most `part_records`, or `part_seconds` worth) are redone by the
  next run.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from pyllm.distributed.inputs import is_parquet, is_url


class OutputStore(Protocol):
    done: set[Any]  # keys (pyllm.jobs.output_key) already in the output

    def write(self, obj: dict[str, Any]) -> bool: ...  # False: the key was already written

    def close(self) -> None: ...


def open_output(location: str, *, retry_errors: bool = False) -> OutputStore:
    if is_url(location) or is_parquet(location):
        if retry_errors:
            raise ValueError(
                f"--retry-errors needs a local JSONL output; {location} is a folder "
                f"of part files, which a run never rewrites"
            )
        return PartsStore(location, "parquet" if is_parquet(location) else "jsonl")
    return JsonlFileStore(Path(location.removeprefix("file://")), retry_errors=retry_errors)


class JsonlFileStore:
    """One local JSONL file, with pyllm/jobs.py's resume rules."""

    def __init__(self, path: Path, *, retry_errors: bool = False) -> None:
        from pyllm.jobs import JsonlWriter, prepare_output

        self.done: set[Any] = set(prepare_output(path, retry_errors=retry_errors).done)
        self._writer = JsonlWriter(path)

    def write(self, obj: dict[str, Any]) -> bool:
        from pyllm.jobs import output_key

        key = output_key(obj)
        if key in self.done:
            return False
        self.done.add(key)
        self._writer.write(obj)
        return True

    def close(self) -> None:
        self._writer.close()


class PartsStore:
    """A folder of part files (local or any fsspec URL), each written whole."""

    def __init__(
        self, location: str, fmt: str, *, part_records: int = 1000, part_seconds: float = 30.0
    ) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(location)
        self.fmt, self.part_records, self.part_seconds = fmt, part_records, part_seconds
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise ValueError(
                f"the output {location} is a file; a {fmt} output there is a folder of part files"
            )
        self.fs.makedirs(self.root, exist_ok=True)
        self.done: set[Any] = self._scan()
        self._run = uuid.uuid4().hex[:12]
        self._parts = 0
        self._pending: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def _part_files(self) -> list[str]:
        return sorted(
            f
            for f in self.fs.find(self.root)
            if Path(f).name.startswith("part-") and f.endswith("." + self.fmt)
        )

    def _scan(self) -> set[Any]:
        from pyllm.jobs import output_key

        done: set[Any] = set()
        for name in self._part_files():
            for obj in _read_part(self.fs, name, self.fmt):
                key = output_key(obj)
                if key is not None:
                    done.add(key)
        return done

    def write(self, obj: dict[str, Any]) -> bool:
        from pyllm.jobs import output_key

        key = output_key(obj)
        if key in self.done:
            return False
        self.done.add(key)
        self._pending.append(obj)
        if (
            len(self._pending) >= self.part_records
            or time.monotonic() - self._since >= self.part_seconds
        ):
            self.flush()
        return True

    def flush(self) -> None:
        self._since = time.monotonic()
        if not self._pending:
            return
        name = f"part-{self._run}-{self._parts:05d}.{self.fmt}"
        final, temp = f"{self.root}/{name}", f"{self.root}/.{name}.tmp"
        with self.fs.open(temp, "wb") as f:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(_parquet_table(self._pending), f)
            else:
                f.write(
                    b"".join(
                        json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in self._pending
                    )
                )
        self.fs.mv(temp, final)
        self._parts += 1
        self._pending = []

    def close(self) -> None:
        self.flush()


def _read_part(fs: Any, name: str, fmt: str) -> list[dict[str, Any]]:
    with fs.open(name, "rb") as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            column = pq.read_table(f, columns=[RESULT_COLUMN]).column(RESULT_COLUMN)
            return [json.loads(text) for text in column.to_pylist()]
        out = []
        for raw in f.read().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out


RESULT_COLUMN = "result"


def _parquet_table(records: list[dict[str, Any]]) -> Any:
    """Output records as one table: the columns of a result and of an error record (null where a
    record has no such field), and `result`, each record's whole JSON line, so nothing is lost
    (carried fields, OpenAI's batch format) and resuming reads the keys from it."""
    import pyarrow as pa

    completion = [
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int64())),
        ("finish_reason", pa.string()),
    ]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("line", pa.int64()),
            *completion,
            (
                "usage",
                pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())]),
            ),
            ("outputs", pa.list_(pa.struct(completion))),
            ("error", pa.struct([("type", pa.string()), ("message", pa.string())])),
            (RESULT_COLUMN, pa.string()),
        ]
    )
    rows = [{**r, RESULT_COLUMN: json.dumps(r, ensure_ascii=False)} for r in records]
    return pa.Table.from_pylist(rows, schema=schema)
