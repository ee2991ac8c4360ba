"""`pyllm generate --ray`: the JSONL/Parquet job on a Ray cluster, one pyllm engine per worker.

The driver (where the command runs) reads the input once with pyllm/jobs.py's rules (ids, line
numbers, duplicates; a line that is no usable record becomes its error record here), skips the
keys already in the output (resume), and hands the other records to Ray Data. Ray Data streams
them in batches of `batch_size` to a pool of actors (`ActorPoolStrategy`), each holding one
`GenerateBatch` — one model, loaded once, and one continuous-batching engine. Results stream back
to the driver, which is the only writer (pyllm/distributed/outputs.py) and writes every key once.

Where workers go: one per GPU (`num_gpus=1`) when the cluster has GPUs and the device allows;
else one per node that carries the custom resource `pyllm_node` (`ray start --resources=
'{"pyllm_node": 1}'`), using all that node's cores; else `workers` actors sharing the cluster's
CPUs. Ray restarts an actor whose process dies and runs its unfinished batches again
(`max_restarts` / `max_task_retries` are -1 for Ray Data's actors).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyllm.errors import PyllmError

NODE_RESOURCE = "pyllm_node"
DEFAULT_BATCH_SIZE = 256
INSTALL_HINT = 'pip install "pyllm[ray]"'


class RayMissingError(PyllmError, ImportError):
    """Ray Data is not installed (it is an optional extra)."""


def import_ray() -> Any:
    """The `ray` module with Ray Data, or RayMissingError naming the install command."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayMissingError(
            f"--ray needs Ray Data, which is not installed ({exc}); install it with: {INSTALL_HINT}"
        ) from None
    return ray


class RayWorkerError(PyllmError, RuntimeError):
    """A batch failed on the workers in a way Ray does not retry (an error in pyllm itself)."""


def _last_line(exc: BaseException) -> str:
    """The last line of a Ray error's text: the worker's own exception, without the traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class RaySummary:
    total: int = 0
    skipped: int = 0  # already in the output from an earlier run
    completed: int = 0
    errors: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    duplicates: int = 0  # results that reached the driver twice (a retried task); written once
    workers: int = 0
    interrupted: bool = False

    def describe(self) -> str:
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        state = "interrupted (re-run the same command to resume)" if self.interrupted else "done"
        dup = f"; {self.duplicates} repeated results dropped" if self.duplicates else ""
        return (
            f"{state}: {self.completed} completed, {self.errors} errors, {self.skipped} "
            f"already done, of {self.total} records; {self.generated_tokens} tokens in "
            f"{self.seconds:.1f} s ({rate:.1f} tokens/s); Ray workers: {self.workers}{dup}"
        )


@dataclass
class WorkerPlan:
    """How many actors, what each asks Ray for, and where and with how many threads it runs."""

    workers: int
    device: str
    ray_args: dict[str, Any]
    threads: int | None


def plan_workers(
    resources: Mapping[str, float], *, device: str, int8: bool, workers: int | None
) -> WorkerPlan:
    """Pick the actor layout from the cluster's resources (`ray.cluster_resources()`)."""
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise ValueError("--device cuda: the Ray cluster has no GPUs")
    if device == "cuda" or (device == "auto" and gpus > 0 and not int8):
        n = workers or gpus
        return WorkerPlan(n, "cuda", {"num_gpus": 1, "num_cpus": 1}, None)
    nodes = int(resources.get(NODE_RESOURCE, 0))
    if nodes > 0:
        # One actor per such node, using every core of it (threads=0: the node's own count).
        return WorkerPlan(
            workers or nodes, "cpu", {"num_cpus": 1, "resources": {NODE_RESOURCE: 1}}, 0
        )
    cpus = max(1, int(resources.get("CPU", 1)))
    n = workers or 1
    return WorkerPlan(n, "cpu", {"num_cpus": 1}, max(1, cpus // n))


def run_ray_job(
    input_location: str,
    output_location: str,
    *,
    model: str | None = "smollm2",
    base_params: Any = None,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_num_seqs: int = 64,
    kv_cache_mb: int | None = None,
    device: str = "auto",
    int8_activations: bool = False,
    kv_dtype: str = "float32",
    progress: bool = False,
    retry_errors: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RaySummary:
    """Run (or resume) a generation job on Ray. `address`: None starts a local cluster, "auto"
    joins the one `ray start` runs here, anything else is a cluster address; an already
    initialized Ray (`ray.init` called by the caller) is used as it is. `on_result` is called on
    the driver with each output record as it is written."""
    from pyllm.distributed.batch import GenerateBatch
    from pyllm.distributed.inputs import is_parquet, is_url, local_jsonl
    from pyllm.distributed.outputs import open_output
    from pyllm.distributed.results import result_facts
    from pyllm.generate_job import ID_FIELDS
    from pyllm.jobs import BadRecord, check_job_files, read_objects

    # What can be refused here is refused before a cluster starts or a worker loads anything.
    if not any(is_url(x) or is_parquet(x) for x in (input_location, output_location)):
        check_job_files(input_location, Path(output_location))
    model_spec = _model_spec(model)
    ray = import_ray()
    started = False  # the cluster is joined or started only when there is something to run
    summary = RaySummary()
    start = time.monotonic()
    store = open_output(output_location, retry_errors=retry_errors)
    bar = None
    try:
        rows: list[dict[str, Any]] = []
        with local_jsonl(input_location) as path:
            for item in read_objects(path, ID_FIELDS):
                summary.total += 1
                key = item.key if isinstance(item, BadRecord) else item[1]
                if key in store.done:
                    summary.skipped += 1
                elif isinstance(item, BadRecord):
                    store.write(item.to_json())
                    summary.errors += 1
                else:
                    line, rid, obj = item
                    rows.append(
                        {"id": rid, "line": line, "record": json.dumps(obj, ensure_ascii=False)}
                    )
        if rows:
            started = _connect(ray, address)
            plan = plan_workers(
                ray.cluster_resources(), device=device, int8=int8_activations, workers=workers
            )
            summary.workers = plan.workers
            bar = _progress_bar(progress, summary.total, summary.skipped + summary.errors)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the driver's own bar counts records, tokens, errors
            blocks = max(1, math.ceil(len(rows) / batch_size))
            ds = ray.data.from_items(rows, override_num_blocks=blocks)
            results = ds.map_batches(
                GenerateBatch,
                fn_constructor_kwargs={
                    "model": model_spec,
                    "sampling": base_params,
                    "max_num_seqs": max_num_seqs,
                    "kv_cache_mb": kv_cache_mb,
                    "device": plan.device,
                    "int8_activations": int8_activations,
                    "kv_dtype": kv_dtype,
                    "threads": plan.threads,
                },
                compute=ray.data.ActorPoolStrategy(size=plan.workers),
                batch_size=batch_size,
                batch_format="pyarrow",
                **plan.ray_args,
            )
            try:
                for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for text in batch.column("result").to_pylist():
                        obj = json.loads(text)
                        if not store.write(obj):
                            summary.duplicates += 1
                            continue
                        facts = result_facts(obj)
                        if facts.error is not None:
                            summary.errors += 1
                        else:
                            summary.completed += 1
                            summary.generated_tokens += facts.completion_tokens
                        if bar is not None:
                            elapsed = max(time.monotonic() - start, 1e-9)
                            bar.update(1)
                            bar.set_postfix_str(
                                f"{summary.generated_tokens / elapsed:.1f} tok/s, "
                                f"{summary.errors} errors"
                            )
                        if on_result is not None:
                            on_result(obj)
            except KeyboardInterrupt:
                summary.interrupted = True
            except Exception as exc:
                if not type(exc).__module__.startswith("ray."):
                    raise
                raise RayWorkerError(
                    f"a Ray worker failed, so the job stopped (what finished "
                    f"is in the output; re-run to resume): "
                    f"{_last_line(exc)}"
                ) from exc
    finally:
        store.close()
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    summary.seconds = time.monotonic() - start
    return summary


def _connect(ray: Any, address: str | None) -> bool:
    """Join or start a cluster unless Ray is already initialized; True when this call did it."""
    if ray.is_initialized():
        return False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.init(
        address=address or None,
        logging_level=logging.WARNING,
        log_to_driver=False,
        **({} if address else {"include_dashboard": False}),
    )
    return True


def _model_spec(model: str | None) -> str | None:
    """What the workers resolve: a name as given (each node pulls it once into its own cache), a
    local path made absolute (it must exist at that path on every node). A spec no model source
    understands is refused here, with resolve_model's own message, rather than by every worker."""
    from pyllm import plugins
    from pyllm.weights.resolve import resolve_model

    if model and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    spec = (model or "").strip()
    if spec and not any(_understands(source, spec) for source in plugins.model_sources().values()):
        resolve_model(spec, progress=False)  # raises ModelNotFoundError naming what was tried
    return model


def _understands(source: Any, spec: str) -> bool:
    try:
        return bool(source.can_resolve(spec))
    except Exception:  # noqa: BLE001 - a broken source is resolve_model's to report
        return False


def _progress_bar(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="rec", desc="generate (ray)", dynamic_ncols=True)
