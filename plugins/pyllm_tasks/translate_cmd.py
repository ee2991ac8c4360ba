"""``pyllm translate``: translate text between named languages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pyllm.cli_options import JOB_HELP, check_io, input_options, print_single, text_argument

HELP = """Translate TEXT (or every record of -i IN.jsonl) from one language to another.

\b
Languages: ISO 639-1 codes (en, fr, de...) or names (French). Long texts are split at sentence
boundaries, translated piece by piece and rejoined with their original spacing.
\b
JSONL: lines in {"id", "text"}, out {"id", "translation"}; --eval reads each record's
"reference" and prints sacrebleu's chrF and BLEU (needs sacrebleu).
"""


@click.command(
    "translate", help=f"{HELP}\n{JOB_HELP}", short_help="Translate text between languages."
)
@click.argument("text", required=False)
@click.option("--from", "src", default=None, help="Source language (default: not named).")
@click.option("--to", "tgt", required=True, help="Target language.")
@click.option(
    "--max-chunk-tokens",
    type=click.IntRange(8, 4096),
    default=200,
    show_default=True,
    help="Longest piece translated at once.",
)
@input_options
def translate(
    text: str | None,
    src: str | None,
    tgt: str,
    max_chunk_tokens: int,
    model: str,
    input_path: Path | None,
    output_path: Path | None,
    as_json: bool,
    evaluate: bool,
    batch_size: int,
    progress: bool | None,
    retry_errors: bool,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
) -> None:
    from pyllm_tasks.translate import language_name

    language_name(src)  # a bad language fails before the model loads
    language_name(tgt)
    check_io(input_path, output_path, evaluate, text is not None)
    options: dict[str, Any] = {"src": src, "tgt": tgt, "max_chunk_tokens": max_chunk_tokens}
    if input_path is None:
        text = text_argument(text)
    from pyllm.cli_options import load_llm, run_file

    llm = load_llm(model, device, int8=int8, kv_dtype=kv_dtype, ctx=ctx)
    if input_path is not None:
        run_file(
            "translate",
            llm,
            input_path,
            output_path,
            options,
            batch_size=batch_size,
            progress=progress,
            evaluate=_evaluate if evaluate else None,
            as_json=as_json,
            retry_errors=retry_errors,
        )
        return
    from pyllm.tasks import get

    result = get("translate").run(llm, [{"text": text}], **options)[0]
    print_single(result, as_json, lambda r: r["translation"])


def _evaluate(pairs: list[tuple[dict, dict]]) -> tuple[dict, str]:
    from pyllm_tasks.metrics import translation_scores

    kept = [
        (res["translation"], rec["reference"])
        for rec, res in pairs
        if isinstance(rec.get("reference"), str)
    ]
    if not kept:
        raise click.ClickException('--eval needs a "reference" translation in the records')
    m = translation_scores([h for h, _ in kept], [r for _, r in kept])
    return m, f"n={m['n']}  chrF={m['chrf']:.2f}  BLEU={m['bleu']:.2f}"
