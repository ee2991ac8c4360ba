"""``pyllm generate -i IN.jsonl -o OUT.jsonl``: batch generation that survives being killed.

See pyllm/jobs.py for the file rules (what a record is, how a run resumes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pyllm.cli.options import (device_option, int8_option, kv_dtype_option, pop_sampling_params, resolve_device,
                               sampling_options)

HELP = """Generate a completion for every record of a JSONL file.

\b
Input lines:  {"id": "a", "prompt": "text"}  or  {"id": "b", "messages": [{"role": "user",
              "content": "..."}]}, optionally with sampling fields ({"temperature": 0.2, ...}).
Output lines: {"id", "text", "token_ids", "finish_reason", "usage"} appended as each record
              finishes; a bad record (invalid JSON, missing or duplicate id, a prompt over the
              context length, a bad sampling field) gets {"id", "line", "error": {"type",
              "message"}} and the run goes on.

Re-running with the same output file resumes: finished ids are skipped and a torn last line
(from a kill) is repaired. Ctrl-C stops after flushing what has finished.
"""


@click.command("generate", help=HELP)
@click.option("-i", "--input", "input_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Input JSONL file.")
@click.option("-o", "--output", "output_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Output JSONL file (appended).")
@click.option("--model", "-m", default="smollm2", show_default=True,
              help="Model name, .gguf path or Hugging Face folder.")
@sampling_options({"max_tokens": 256, "temperature": 1.0})
@click.option("--max-num-seqs", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Sequences decoded together (continuous batching).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@int8_option()
@kv_dtype_option("KV-cache element type: half precision halves its memory and attention's "
                 "memory traffic (batches ~15% faster with --int8; llama.cpp's default is "
                 "float16); float32 is exact.")
@device_option()
def generate(input_path: Path, output_path: Path, model: str, max_num_seqs: int,
             progress: bool | None, int8: bool, kv_dtype: str, device: str, **kwargs: Any) -> None:
    base = pop_sampling_params(kwargs)
    from pyllm.jobs import run_job

    summary = run_job(input_path, output_path, model=model, base_params=base,
                      max_num_seqs=max_num_seqs, int8_activations=int8, kv_dtype=kv_dtype,
                      device=resolve_device(device, int8),
                      progress=sys.stderr.isatty() if progress is None else progress)
    click.echo(summary.describe(), err=True)
    if summary.interrupted:
        sys.exit(130)
