"""`pyllm perplexity MODEL FILE`: how well a model predicts a text, in non-overlapping windows."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from pyllm.cli.options import (
    device_option,
    int8_option,
    kv_dtype_option,
    load_llm,
    model_option,
    pick_model,
)

PROTOCOL = """\
Protocol: FILE is read as UTF-8 and tokenized once, as the model's tokenizer does by default (a
BOS token only where the tokenizer adds one by default, at the very start). The ids are cut into
consecutive, non-overlapping windows of N tokens (--ctx; the last window may be shorter, and a
last window of a single token is dropped). Each window is run from an empty cache, and every
token after the first of each window is scored: its log-probability given the tokens before it in
that window. Perplexity = exp(mean negative log-likelihood over all scored tokens)."""


@click.command("perplexity", help="Perplexity of MODEL on the text in FILE.\n\n" + PROTOCOL)
@click.argument("model", required=False, metavar="[MODEL]")
@click.argument("file", required=False, metavar="FILE")
@model_option()
@click.option(
    "--ctx",
    type=click.IntRange(min=2),
    default=512,
    show_default=True,
    help="Window length in tokens (at most the model's context length).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON object {"perplexity", "nll", "tokens_scored", "windows", '
    '"ctx", "tokens"}.',
)
@int8_option()
@kv_dtype_option("KV-cache element type (half precision: half the memory).")
@device_option()
def perplexity(
    model: str | None,
    file: str | None,
    model_option: str | None,
    ctx: int,
    as_json: bool,
    int8: bool,
    kv_dtype: str,
    device: str,
) -> None:
    from pyllm.errors import ContextLengthError
    from pyllm.generation import score_ids

    model, (file,) = pick_model(model_option, [model, file])
    if file is None:
        raise click.UsageError("Missing argument 'FILE': the text file to score")
    path = click.Path(exists=True, dir_okay=False, path_type=Path).convert(file, None, None)
    text = path.read_text(encoding="utf-8")
    llm = load_llm(model, int8=int8, kv_dtype=kv_dtype, device=device)
    if ctx > llm.context_length:
        raise ContextLengthError(
            f"--ctx {ctx} is longer than the model's context length of {llm.context_length} tokens"
        )
    ids = llm.tokenizer.encode(text)
    windows = [ids[i : i + ctx] for i in range(0, len(ids), ctx)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise click.UsageError(f"{path} holds {len(ids)} token(s): nothing to score")
    nll, scored = 0.0, 0
    show = not as_json and sys.stderr.isatty()
    for n, window in enumerate(windows, 1):
        for tok in score_ids(llm.model, window, top_n=0)[1:]:
            assert tok.logprob is not None  # only the first token of a window has none
            nll -= tok.logprob
            scored += 1
        if show:
            click.echo(
                f"\rwindow {n}/{len(windows)}: perplexity so far {math.exp(nll / scored):.4f}",
                err=True,
                nl=False,
            )
    if show:
        click.echo(err=True)
    ppl = math.exp(nll / scored)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "perplexity": ppl,
                    "nll": nll / scored,
                    "tokens_scored": scored,
                    "windows": len(windows),
                    "ctx": ctx,
                    "tokens": len(ids),
                }
            )
        )
    else:
        click.echo(
            f"perplexity {ppl:.4f} (mean NLL {nll / scored:.4f} nats over {scored} tokens "
            f"in {len(windows)} windows of up to {ctx})"
        )
