"""`GenerateBatch`: one pyllm engine that turns batches of records into the same records with
their generations — the callable a data engine runs on each worker.

The model is loaded once, in `__init__` (a Ray actor's, a Spark Python worker's, a Dask worker's
process); every call then feeds a whole batch through one continuous-batching engine whose
KV-cache (and prefix cache) lives as long as the instance. A record is what a line of
`pyllm generate`'s input is (an `id`, a `prompt` or `messages`, optional sampling fields; or an
OpenAI batch request), either as columns (null cells are absent fields) or as one `record` column
holding the JSON text of the line. It is checked by the same rules (pyllm/generate_job.py;
pyllm/distributed/records.py says how), sampled with the same settings and answered with the
same output record, so a record gives the same text here as in a single-process
`pyllm generate` (seeded and greedy sampling do not depend on the batch).

Columns added to the batch:
- `result`: the output record's JSON text, exactly the line `pyllm generate` writes;
- `text`, `finish_reason`: the first completion's (null for an error);
- `completion_tokens`: tokens generated for the record (0 for an error);
- `error`: null, or "<type>: <message>" for a record that could not run (bad record, prompt over
  the context length, bad sampling field). A bad record never fails the batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from pyllm.distributed.columns import add_columns, batch_rows
from pyllm.distributed.records import parse_rows
from pyllm.distributed.results import result_facts
from pyllm.jobs import BadRecord


class GenerateBatch:
    """Load `model` once; `__call__(batch)` returns the batch with the output columns added.

    `sampling` (a `SamplingParams` or a mapping of its fields) is the base every record's own
    sampling fields override, as `pyllm generate`'s flags are. `threads` sets the CPU kernels'
    thread count (data engines often start workers with OMP_NUM_THREADS=1); `kv_cache_mb` sizes
    the engine's KV-cache (default: PYLLM_KV_CACHE_MB or 1024).
    """

    def __init__(
        self,
        model: str | Path | None = "smollm2",
        sampling: Any = None,
        *,
        max_num_seqs: int = 64,
        kv_cache_mb: int | None = None,
        device: str = "cpu",
        int8_activations: bool = False,
        kv_dtype: str = "float32",
        threads: int | None = None,
    ) -> None:
        from pyllm.api import load
        from pyllm.engine.llm_engine import LLMEngine
        from pyllm.sampling_params import SamplingParams

        if threads is not None:
            _set_threads(threads)
        if sampling is None or isinstance(sampling, SamplingParams):
            self.base_params = sampling or SamplingParams()
        elif isinstance(sampling, Mapping):
            self.base_params = SamplingParams.from_mapping(sampling)
        else:
            raise TypeError(
                f"sampling must be a SamplingParams or a mapping of its fields, got "
                f"{type(sampling).__name__}"
            )
        # A model name is resolved here, on the worker: the pull is atomic and idempotent, so the
        # workers of one node pull it once between them and then memory-map the same file.
        self.llm = load(
            model, device, int8_activations=int8_activations, kv_dtype=kv_dtype, progress=False
        )
        overrides: dict[str, Any] = {"max_num_seqs": max_num_seqs}
        if kv_cache_mb is not None:
            overrides["kv_cache_mb"] = kv_cache_mb
        self.max_num_seqs = max_num_seqs
        self.engine = LLMEngine(
            self.llm.model, self.llm.tokenizer, self.llm.engine_config(**overrides)
        )

    def __call__(self, batch: Any) -> Any:
        records = self.generate_records(batch_rows(batch))
        facts = [result_facts(r) for r in records]
        return add_columns(
            batch,
            {
                "result": [json.dumps(r, ensure_ascii=False) for r in records],
                "text": [f.text for f in facts],
                "finish_reason": [f.finish_reason for f in facts],
                "completion_tokens": [f.completion_tokens for f in facts],
                "error": [f.error for f in facts],
            },
        )

    def generate_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output record per row, in row order (see the module's docstring)."""
        from pyllm.errors import ContextLengthError
        from pyllm.sampling_params import SamplingParams

        out: list[dict[str, Any] | None] = [None] * len(rows)
        runnable: dict[int, tuple[Any, list[int], int]] = {}  # row -> (record, prompt ids, n)
        requests: list[tuple[int, list[int], Any]] = []
        for i, rec in enumerate(parse_rows(rows)):
            if isinstance(rec, BadRecord):
                out[i] = rec.to_json()
                continue
            if rec.problem is not None:
                out[i] = rec.failure(*rec.problem)
                continue
            try:
                params = SamplingParams.from_mapping(rec.overrides, base=self.base_params)
                ids = self.llm.encode_prompt(rec.prompt)
                self.engine.check_request(ids, params)
            except (ValueError, TypeError, ContextLengthError) as exc:
                kind = "context_length" if isinstance(exc, ContextLengthError) else "invalid_record"
                out[i] = rec.failure(kind, str(exc))
                continue
            runnable[i] = (rec, ids, params.n)
            requests.append((i, ids, params))
        got: dict[int, dict[int, Any]] = {}
        for event in self.engine.run(iter(requests), lookahead=2 * self.max_num_seqs):
            if event.finished:
                row = cast(int, event.request)  # the request ids given above are row numbers
                done = got.setdefault(row, {})
                done[event.output] = event.completion
                rec, ids, n = runnable[row]
                if len(done) == n:
                    completions = [done[j] for j in sorted(done)]
                    out[row] = rec.result(self.llm.name, ids, completions)
        missing = sum(r is None for r in out)
        if missing:  # the engine stopped without finishing them: never drop a record silently
            raise RuntimeError(f"the engine finished without results for {missing} records")
        return [r for r in out if r is not None]


def _set_threads(n: int) -> None:
    """Threads for torch and pyllm's CPU kernels: `n`, or every core this process may use when
    `n` is 0, never more than that."""
    import torch

    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    n = cores if n <= 0 else min(n, cores)
    torch.set_num_threads(n)
    try:
        from pyllm import _C

        _C.set_num_threads(n)
    except ImportError:  # the reference kernels (PYLLM_KERNELS=reference) need no extension
        pass
