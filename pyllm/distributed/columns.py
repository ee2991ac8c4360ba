"""A batch of records as rows and back: the shapes a data engine hands a batch callable.

Ray Data, Spark's `predict_batch_udf` and Dask pass batches as a dict of columns (numpy arrays
or lists), a pandas DataFrame or a pyarrow Table. `batch_rows` reads any of them as plain Python
dicts (numpy scalars and arrays become ints, floats, lists; a null or NaN cell is left out, as an
absent JSON field would be); `add_columns` returns the same kind of batch with new columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def batch_rows(batch: Any) -> list[dict[str, Any]]:
    """The records of `batch` (dict of columns, pandas.DataFrame or pyarrow.Table), as dicts."""
    if _is_arrow_table(batch):
        rows = batch.to_pylist()
    elif _is_pandas_frame(batch):
        rows = batch.to_dict("records")
    elif isinstance(batch, Mapping):
        columns = {str(k): list(v) for k, v in batch.items()}
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise ValueError(
                f"the batch's columns have different lengths: "
                f"{ {k: len(v) for k, v in columns.items()} }"
            )
        n = sizes.pop() if sizes else 0
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    else:
        raise TypeError(
            "a batch must be a dict of columns, a pandas DataFrame or a pyarrow "
            f"Table; got {type(batch).__name__}"
        )
    plain = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return [{k: v for k, v in row.items() if not _is_null(v)} for row in plain]


def add_columns(batch: Any, new: Mapping[str, Sequence[Any]]) -> Any:
    """`batch` with the columns of `new` added (or replaced), in the batch's own kind."""
    if _is_arrow_table(batch):
        import pyarrow as pa

        for name, values in new.items():
            column = pa.array(list(values))
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, column)
            else:
                batch = batch.append_column(name, column)
        return batch
    if _is_pandas_frame(batch):
        import pandas as pd

        out = batch.copy()
        for name, values in new.items():  # object columns: a null stays None (not NaN)
            out[name] = pd.Series(list(values), index=out.index, dtype=object)
        return out
    import numpy as np

    out_dict = dict(batch)
    for name, values in new.items():
        column = np.empty(len(values), dtype=object)
        column[:] = list(values)
        out_dict[name] = column
    return out_dict


def _plain(value: Any) -> Any:
    """numpy/pandas values -> plain Python ones (JSON's types), recursively."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, Mapping):
        items = {str(k): _plain(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if not _is_null(v)}
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _is_arrow_table(batch: Any) -> bool:
    return (
        type(batch).__module__.startswith("pyarrow")
        and hasattr(batch, "to_pylist")
        and hasattr(batch, "append_column")
    )


def _is_pandas_frame(batch: Any) -> bool:
    return type(batch).__module__.startswith("pandas") and hasattr(batch, "to_dict")
