"""The input of a distributed job as a local JSONL file that pyllm/jobs.py's rules can read.

A local JSONL file is used as it is. A URL (`s3://...`, `gs://...`, anything fsspec opens) is
copied to a temporary file first; Parquet (a `.parquet` file or a folder of them, local or a URL)
is converted row by row to JSONL, a null cell being an absent field. Reading the records on the
driver, once, is what keeps the single-process rules exact: line numbers for records without a
usable id, duplicate ids across the whole input, the same error records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARQUET_SUFFIX = ".parquet"


def is_url(location: str) -> bool:
    """True for `scheme://...` locations other than plain local paths (`file://` is local)."""
    return "://" in location and not location.startswith("file://")


def is_parquet(location: str) -> bool:
    return location.rstrip("/").lower().endswith(PARQUET_SUFFIX)


@contextlib.contextmanager
def local_jsonl(location: str) -> Iterator[Path]:
    """A local JSONL file holding the input's records (a temporary one, removed afterwards, when
    the input is a URL or Parquet)."""
    from pyllm.jobs import readable_input

    if not is_url(location) and not is_parquet(location):
        with readable_input(location.removeprefix("file://")) as path:
            yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="pyllm-input-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as dst:
            if is_parquet(location):
                _parquet_to_jsonl(location, dst)
            else:
                import fsspec

                with fsspec.open(location, "rb") as src:
                    shutil.copyfileobj(src, dst)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _parquet_to_jsonl(location: str, dst: Any) -> None:
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(location)
    if fs.isdir(path):
        files = sorted(
            f
            for f in fs.find(path)
            if f.endswith(PARQUET_SUFFIX) and not Path(f).name.startswith((".", "_"))
        )
        if not files:
            raise ValueError(f"{location}: a folder with no .parquet files")
    else:
        files = [path]
    for name in files:
        with fs.open(name, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    record = {k: v for k, v in row.items() if v is not None}
                    dst.write(json.dumps(record, ensure_ascii=False, default=str).encode() + b"\n")
