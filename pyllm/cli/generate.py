"""``pyllm generate -i IN.jsonl -o OUT.jsonl``: batch generation that survives being killed.

See pyllm/generate_job.py for what a record is and pyllm/jobs.py for the file rules (keys,
resume, error lines, retrying errors)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pyllm.cli.options import (
    EXIT_RECORDS_FAILED,
    ctx_option,
    device_option,
    int8_option,
    kv_dtype_option,
    pop_sampling_params,
    resolve_device,
    sampling_options,
    system_option,
)
from pyllm.distributed.cli import (
    PathOrURL,
    check_local_only,
    generate_on_ray,
    pop_ray_options,
    ray_options,
)

EXIT_INTERRUPTED = 130

HELP = """Generate a completion for every record of a JSONL file.

\b
Input lines:  {"id": "a", "prompt": "text"}  or  {"id": "b", "messages": [{"role": "user",
              "content": "..."}]}; ids are strings or integers. Sampling fields sit at the top
              level or under "params" ({"temperature": 0.2, ...}); other fields ("metadata",
              ...) are copied to the output line. OpenAI batch requests ({"custom_id",
              "method", "url", "body"}) are answered in OpenAI's batch output format.
Output lines: {"id", "text", "token_ids", "finish_reason", "usage"} appended as each record
              finishes; a bad record (invalid JSON or UTF-8, missing or duplicate id, a prompt
              over the context length, a bad sampling field) gets {"id", "line", "error":
              {"type", "message"}} and the run goes on ("id" is null when the line has no
              usable id of its own, e.g. a duplicate).

-s/--system gives a system message to the "messages" records (and OpenAI chat requests) that
have none; a record's own system message is kept, and a plain "prompt" is sent as it is (no
chat template). --ctx caps the context length (a longer prompt is a "context_length" error).

\b
-i - reads standard input. The output must be a regular file other than the input.
Re-running with the same output file resumes: finished records (failed ones too) are skipped
and a torn last line (from a kill) is repaired; --retry-errors runs the failed ones again.
Ctrl-C stops after flushing what has finished.

\b
Exit status: 0 every record ran; 3 some records failed in this run (see their error lines);
2 bad usage or files; 130 interrupted.
"""


@click.command("generate", help=HELP)
@click.option(
    "-i",
    "--input",
    "input_path",
    required=True,
    type=PathOrURL(click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)),
    help="Input JSONL file (- for standard input).",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=PathOrURL(click.Path(dir_okay=False, path_type=Path)),
    help="Output JSONL file (appended; a regular file).",
)
@system_option('A system message for the "messages" records without one (see above).')
@click.option(
    "--retry-errors",
    is_flag=True,
    help="Run again the records whose output line is an error (that line is removed).",
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="Model name, alias, .gguf path or Hugging Face folder  [default: the one "
    "`pyllm models default` set, else smollm2]",
)
@sampling_options({"max_tokens": 256, "temperature": 1.0})
@click.option(
    "--max-num-seqs",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Sequences decoded together (continuous batching).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: when stderr is a terminal).",
)
@int8_option()
@kv_dtype_option(
    "KV-cache element type: half precision halves its memory and attention's "
    "memory traffic (batches ~15% faster with --int8; llama.cpp's default is "
    "float16); float32 is exact."
)
@device_option()
@ctx_option()
@ray_options()
def generate(
    input_path: Path,
    output_path: Path,
    system: str | None,
    retry_errors: bool,
    model: str,
    max_num_seqs: int,
    progress: bool | None,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
    **kwargs: Any,
) -> None:
    ray = pop_ray_options(kwargs)
    check_local_only(ray, input_path, output_path)
    if ray["ray_address"] is not None and (ctx is not None or system is not None):
        raise click.UsageError(
            "--ctx and --system apply to local runs; --ray workers do not take them yet"
        )
    show = sys.stderr.isatty() if progress is None else progress
    job: dict[str, Any] = dict(  # what a local run and a Ray run both take
        model=model,
        base_params=pop_sampling_params(kwargs),
        max_num_seqs=max_num_seqs,
        int8_activations=int8,
        kv_dtype=kv_dtype,
        retry_errors=retry_errors,
        progress=show,
    )
    if ray["ray_address"] is not None:  # the same job on a Ray cluster (pyllm/distributed/)
        summary = generate_on_ray(ray, input_path, output_path, device=device, **job)
    else:
        from pyllm.generate_job import run_job

        summary = run_job(
            input_path,
            output_path,
            device=resolve_device(device, int8),
            context_length=ctx,
            system=system,
            **job,
        )
    click.echo(summary.describe(), err=True)
    sys.exit(exit_status(summary))


def exit_status(summary: Any) -> int:
    """The documented exit status of a finished (or interrupted) job."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_RECORDS_FAILED if summary.errors else 0
