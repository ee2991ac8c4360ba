"""`pyllm tokenize MODEL TEXT`: show the token ids and pieces a model's tokenizer gives a text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Tokenizer


def resolve_model_path(spec: str) -> Path:
    """A model spec (a path, or a name a model source knows, such as `smollm2`) -> local path."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if path.suffix in (".gguf", ".json", ".model") or "/" in spec:
        raise FileNotFoundError(2, "No such file or directory", spec)
    from pyllm.weights.resolve import resolve_model

    return resolve_model(spec)


def tokenizer_for(spec: str) -> Tokenizer:
    """The tokenizer of a model: a .gguf file, a Hugging Face folder, a tokenizer.json or a
    SentencePiece .model file, or a model name."""
    from pyllm.tokenizer import load_tokenizer

    path = resolve_model_path(spec)
    if path.is_file() and path.suffix not in (".json", ".model"):
        from pyllm.weights.gguf import load_gguf

        return load_tokenizer(load_gguf(path).metadata, origin=path)
    return load_tokenizer({}, path, origin=path)


@click.command(name="tokenize")
@click.argument("model")
@click.argument("text", required=False)
@click.option("--file", "-f", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the text from this file (UTF-8) instead of TEXT; '-' reads stdin.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ids": [...], "pieces": [...]} as JSON.')
@click.option("--special", is_flag=True,
              help="Parse special-token strings such as <|im_end|> in the text as special tokens.")
@click.option("--bos/--no-bos", default=None,
              help="Add the BOS token or not (default: what the model's metadata says).")
def tokenize(model: str, text: str | None, file: Path | None, as_json: bool, special: bool,
             bos: bool | None) -> None:
    """Show the token ids and pieces of TEXT under MODEL's tokenizer.

    MODEL is a .gguf file, a Hugging Face folder, a tokenizer.json or SentencePiece .model file,
    or a model name such as `smollm2`. Pieces are vocabulary strings (byte-level BPE shows a
    space as 'Ġ', SentencePiece as '▁').

    \b
    Examples:
      pyllm tokenize smollm2 "Hello world"
      pyllm tokenize model.gguf --file prompt.txt --json
    """
    if (text is None) == (file is None):
        raise click.UsageError("give either TEXT or --file PATH (exactly one)")
    if file is not None:
        if str(file) == "-":
            text = click.get_text_stream("stdin").read()
        else:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    assert text is not None
    tok = tokenizer_for(model)
    ids = tok.encode(text, add_bos=bos, parse_special=special)
    pieces = [tok.id_to_piece(i) for i in ids]
    if as_json:
        click.echo(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return
    width = max((len(str(i)) for i in ids), default=1)
    for i, piece in zip(ids, pieces):
        click.echo(f"{i:>{width}}  {piece}")
    click.echo(f"({len(ids)} tokens)", err=True)
