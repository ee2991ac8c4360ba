"""`pyllm embed`: embedding vectors of texts (LLM.embed: mean-pooled, L2-normalised final hidden
states of the language model; see its docstring for what they are good for)."""

from __future__ import annotations

import json

import click

from pyllm.cli.options import load_llm, load_options, model_option, stdin_text


@click.command(
    "embed",
    help='Print one JSON line {"text", "embedding"} per TEXT (or per '
    "line of standard input): the mean of the model's final hidden "
    "states, scaled to unit length. A language model is no trained "
    "embedding model: use the vectors for rough similarity only.",
)
@click.argument("texts", nargs=-1)
@model_option()
@load_options()
def embed(
    texts: tuple[str, ...],
    model_option: str | None,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
) -> None:
    items = list(texts)
    if not items:
        piped = stdin_text()
        items = [line for line in (piped or "").splitlines() if line.strip()]
    if not items:
        raise click.UsageError("give at least one TEXT (or lines on standard input)")
    llm = load_llm(model_option, int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx)
    for text, vector in zip(items, llm.embed(items)):
        click.echo(json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]}))
