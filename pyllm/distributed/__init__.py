"""Batch generation beyond one process: one pyllm engine per worker of a data engine.

- `GenerateBatch` — the batch callable. Its `__init__` loads the model once (a Ray actor's, a
  Spark Python worker's or a Dask worker's process); each call takes a batch of records (a dict
  of columns, a pandas DataFrame or a pyarrow Table) and returns the same records with the
  output columns added (`result`, `text`, `finish_reason`, `completion_tokens`, `error`).
  Records and output records are `pyllm generate`'s own (pyllm/generate_job.py).
- `run_ray_job` — what `pyllm generate --ray` runs: JSONL or Parquet in (a local path or any
  URL fsspec opens), Ray Data's `map_batches` over an actor pool of `GenerateBatch`, results
  written by the driver, each key once; resumable, with a progress bar.

Ray is an optional extra (`pip install "pyllm[ray]"`); nothing here imports it until a Ray job
starts. How to run on a cluster, and the Spark and Dask recipes: docs/scaling.md.
"""

from pyllm.distributed.batch import GenerateBatch
from pyllm.distributed.ray_job import RayMissingError, RaySummary, run_ray_job

__all__ = ["GenerateBatch", "RayMissingError", "RaySummary", "run_ray_job"]
