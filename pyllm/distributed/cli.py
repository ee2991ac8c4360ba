"""The `--ray` side of `pyllm generate`: its options, and the call into pyllm.distributed.

Kept here so the command's module gains one option decorator and one branch; nothing here
imports Ray (that happens when a `--ray` run starts, with a clear error when it is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pyllm.distributed.inputs import is_parquet, is_url

RAY_OPTION_NAMES = ("ray_address", "ray_workers", "ray_batch_size", "kv_cache_mb")


class PathOrURL(click.ParamType):
    """A local path checked by `path_type`, or (for --ray runs) a URL / Parquet location kept as
    a string."""

    def __init__(self, path_type: click.Path) -> None:
        self.path_type = path_type
        self.name = path_type.name  # the help shows FILE, as for the plain path type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and (is_url(value) or is_parquet(value)):
            return value
        return self.path_type.convert(value, param, ctx)


def ray_options() -> Callable[[Any], Any]:
    """`--ray [ADDRESS]`, `--ray-workers`, `--ray-batch-size`, `--kv-cache-mb`."""

    def decorate(f: Any) -> Any:
        f = click.option(
            "--kv-cache-mb",
            type=click.IntRange(16, None),
            default=None,
            help="KV-cache of each Ray worker's engine, in MiB [default: "
            "PYLLM_KV_CACHE_MB or 1024] (with --ray).",
        )(f)
        f = click.option(
            "--ray-batch-size",
            type=click.IntRange(1, None),
            default=256,
            show_default=True,
            help="Records per batch a Ray worker takes (with --ray); keep it several "
            "times --max-num-seqs so continuous batching stays full.",
        )(f)
        f = click.option(
            "--ray-workers",
            type=click.IntRange(1, None),
            default=None,
            help="Ray workers (engines) [default: one per GPU, else one per node with "
            "the pyllm_node resource, else 1] (with --ray).",
        )(f)
        f = click.option(
            "--ray",
            "ray_address",
            is_flag=False,
            flag_value="",
            default=None,
            metavar="[ADDRESS]",
            help='Run on a Ray cluster (pip install "pyllm[ray]"): --ray alone '
            "starts a local one, --ray auto joins the one `ray start` runs "
            "here, else a cluster address. Input and output may then also be "
            "URLs (s3://...) or Parquet; see docs/scaling.md.",
        )(f)
        return f

    return decorate


def pop_ray_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the --ray options from a command's kwargs."""
    return {name: kwargs.pop(name, None) for name in RAY_OPTION_NAMES}


def check_local_only(ray: dict[str, Any], *locations: Any) -> None:
    """Without --ray: a URL or Parquet location, or a --ray-only option, is a usage error."""
    if ray.get("ray_address") is not None:
        return
    for loc in locations:
        if isinstance(loc, str) and (is_url(loc) or is_parquet(loc)):
            raise click.UsageError(
                f"{loc}: URLs and Parquet are read and written by --ray runs; "
                f"without --ray, give local JSONL files"
            )
    if ray.get("kv_cache_mb") is not None or ray.get("ray_workers") is not None:
        raise click.UsageError(
            "--ray-workers and --kv-cache-mb apply to --ray runs (a single "
            "process reads PYLLM_KV_CACHE_MB)"
        )


def generate_on_ray(
    ray: dict[str, Any], input_location: Path | str, output_location: Path | str, **job: Any
) -> Any:
    """Run the job through pyllm.distributed.run_ray_job; returns its summary."""
    from pyllm.distributed.ray_job import run_ray_job

    return run_ray_job(
        str(input_location),
        str(output_location),
        address=ray["ray_address"] or None,
        workers=ray["ray_workers"],
        batch_size=ray["ray_batch_size"] or 256,
        kv_cache_mb=ray["kv_cache_mb"],
        **job,
    )
