"""`pyllm tokenize MODEL TEXT`: show the token ids and pieces a model's tokenizer gives a text."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pyllm.cli.options import model_option, pick_model, stdin_text

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Tokenizer


def resolve_model_path(spec: str | None) -> Path:
    """A model spec (a path, or a name a model source knows, such as `smollm2`; None: the
    default model) -> local path."""
    if spec is None:
        from pyllm.weights.resolve import resolve_model

        return resolve_model(None)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if path.suffix in (".gguf", ".json", ".model") or "/" in spec:
        raise FileNotFoundError(2, "No such file or directory", spec)
    from pyllm.weights.resolve import resolve_model

    return resolve_model(spec)


def tokenizer_for(spec: str | None) -> Tokenizer:
    """The tokenizer of a model: a .gguf file, a Hugging Face folder, a tokenizer.json or a
    SentencePiece .model file, or a model name."""
    from pyllm.errors import ModelFormatError
    from pyllm.tokenizer import load_tokenizer
    from pyllm.weights.pull import damaged_hint

    path = resolve_model_path(spec)
    try:
        if path.is_file() and path.suffix not in (".json", ".model"):
            from pyllm.weights.gguf import load_gguf

            return load_tokenizer(load_gguf(path).metadata, origin=path)
        return load_tokenizer({}, path, origin=path)
    except ModelFormatError as e:
        hint = damaged_hint(path)
        if hint is None:
            raise
        raise ModelFormatError(f"{e}; {hint}") from e


@click.command(name="tokenize")
@click.argument("model", required=False, metavar="[MODEL]")
@click.argument("text", required=False)
@model_option()
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the text from this file (UTF-8) instead of TEXT; '-' reads stdin.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"ids": [...], "pieces": [...]} as JSON.'
)
@click.option(
    "--special",
    is_flag=True,
    help="Parse special-token strings such as <|im_end|> in the text as special tokens.",
)
@click.option(
    "--bos/--no-bos",
    default=None,
    help="Add the BOS token or not (default: what the model's metadata says).",
)
def tokenize(
    model: str | None,
    text: str | None,
    model_option: str | None,
    file: Path | None,
    as_json: bool,
    special: bool,
    bos: bool | None,
) -> None:
    """Show the token ids and pieces of TEXT under MODEL's tokenizer.

    MODEL (or -m MODEL) is a .gguf file, a Hugging Face folder, a tokenizer.json or
    SentencePiece .model file, or a model name such as `smollm2`. With neither TEXT nor --file,
    a pipe or file on stdin is read. Pieces are vocabulary strings (byte-level BPE shows a
    space as 'Ġ', SentencePiece as '▁').

    \b
    Examples:
      pyllm tokenize smollm2 "Hello world"
      pyllm tokenize model.gguf --file prompt.txt --json
      pyllm tokenize smollm2 < prompt.txt
    """
    model, (text,) = pick_model(model_option, [model, text])
    if text is None and file is None:
        text = stdin_text() or None  # `pyllm tokenize smollm2 < file`
    if (text is None) == (file is None):
        raise click.UsageError(
            "give either TEXT or --file PATH (exactly one), or pipe the text on stdin"
        )
    if file is not None:
        if str(file) == "-":
            text = sys.stdin.read()  # as stdin_text() reads a pipe
        else:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    assert text is not None
    from pyllm.tokenizer import describe_unrepresentable, request_scope

    tok = tokenizer_for(model)
    with request_scope(warn=False):  # the loss is shown below instead
        ids = tok.encode(text, add_bos=bos, parse_special=special)
    lost = _unrepresentable(tok, text)
    pieces = [tok.id_to_piece(i) for i in ids]
    if as_json:
        out: dict = {"ids": ids, "pieces": pieces}
        if lost:
            out["unrepresentable"] = [
                {"position": pos, "char": ch, "codepoint": f"U+{ord(ch):04X}"} for pos, ch in lost
            ]
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    width = max((len(str(i)) for i in ids), default=1)
    for i, piece in zip(ids, pieces):
        click.echo(f"{i:>{width}}  {piece}")
    for pos, ch in lost:
        click.echo(f"{'!':>{width}}  U+{ord(ch):04X} at position {pos}: not representable")
    click.echo(f"({len(ids)} tokens)", err=True)
    if lost:
        fate = getattr(tok, "lost_text_fate", "lost")
        click.echo(f"warning: {describe_unrepresentable(lost, fate)}", err=True)


def _unrepresentable(tok: Tokenizer, text: str) -> list[tuple[int, str]]:
    """What the tokenizer loses of `text` (tokenizers from plugins may not say: none then)."""
    find: Callable[[str], list[tuple[int, str]]] | None = getattr(tok, "unrepresentable", None)
    return list(find(text)) if find is not None else []
