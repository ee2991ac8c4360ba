"""`pyllm run MODEL PROMPT`: generate once and stream the text to stdout."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from pyllm.cli.options import (device_option, int8_option, pop_sampling_params, resolve_device,
                               sampling_options)


@click.command("run")
@click.argument("model")
@click.argument("prompt", required=False, metavar="PROMPT")
@click.option("--chat", is_flag=True,
              help="Send PROMPT as a user message through the model's chat template.")
@click.option("--system", default=None, help="A system message (implies --chat).")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object {"text", "token_ids", "finish_reason"} instead of '
                   "streaming text.")
@click.option("--truncate", type=click.Choice(["none", "left"]), default="none", show_default=True,
              help="A prompt longer than the context is an error (none) or keeps its end (left).")
@sampling_options()
@int8_option()
@device_option()
def run(model: str, prompt: str | None, chat: bool, system: str | None, as_json: bool, truncate: str,
        int8: bool, device: str, **kwargs: Any) -> None:
    """Generate a continuation of PROMPT ('-' reads it from stdin) with MODEL (a .gguf file, a
    Hugging Face folder, or a name such as smollm2, pulled on first use)."""
    if prompt is None:  # `pyllm run "some text"`, as `llm` and `ollama run` users may type it
        example = shlex.quote(model) if " " in model.strip() else "'Write a haiku about the sea'"
        raise click.UsageError(f"Missing argument 'PROMPT': the model comes first, then the prompt, "
                               f"e.g. pyllm run smollm2 {example}")
    params = pop_sampling_params(kwargs)
    if prompt == "-":
        prompt = sys.stdin.read()
    from pyllm.api import load

    llm = load(model, resolve_device(device, int8), progress=sys.stderr.isatty(), int8_activations=int8)
    if chat or system is not None:
        messages = [{"role": "system", "content": system}] if system is not None else []
        request: Any = messages + [{"role": "user", "content": prompt}]
    else:
        request = prompt
    policy = None if truncate == "none" else truncate
    if as_json:
        result = llm.generate([request], params, truncate=policy)[0]
        click.echo(json.dumps({"text": result.text, "token_ids": result.token_ids,
                               "finish_reason": result.finish_reason}, ensure_ascii=False))
        return
    for delta in llm.stream(request, params, truncate=policy):
        click.echo(delta, nl=False)
        sys.stdout.flush()
    click.echo()
