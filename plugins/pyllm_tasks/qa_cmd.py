"""``pyllm qa``: answer a question from a context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pyllm.cli_options import JOB_HELP, check_io, input_options, print_single

HELP = """Answer QUESTION from a context (or every record of -i IN.jsonl).

\b
--extractive constrains the answer to a span of the context (decoding may only continue
the context's own tokens) and gives its character offsets: --json prints
{"answer", "start", "end", "logprob"} with context[start:end] == answer.
\b
JSONL: lines in {"id", "context", "question"}, out {"id", "answer", ...}; --eval reads each
record's gold "answers" (a list of strings, or "answer") and prints exact match and token F1.
"""


@click.command(
    "qa",
    help=f"{HELP}\n{JOB_HELP}",
    short_help="Answer a question from a context (--extractive: a span of it).",
)
@click.option("--context", "context", help="The context text.")
@click.option(
    "--context-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the context from a file.",
)
@click.option("--question", "-q", help="The question.")
@click.option("--extractive", "-x", is_flag=True, help="Answer with a span of the context.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@input_options
def qa(
    context: str | None,
    context_file: Path | None,
    question: str | None,
    extractive: bool,
    max_tokens: int,
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
    single = context is not None or context_file is not None or question is not None
    check_io(input_path, output_path, evaluate, single)
    options: dict[str, Any] = {"extractive": extractive, "max_tokens": max_tokens}
    if input_path is None:
        if context is not None and context_file is not None:
            raise click.UsageError("give --context or --context-file, not both")
        if context_file is not None:
            context = context_file.read_text(encoding="utf-8")
        if context is None or not question:
            raise click.UsageError(
                "give --context TEXT (or --context-file F) and --question Q, or -i IN.jsonl"
            )
    from pyllm.cli_options import load_llm, run_file

    llm = load_llm(model, device, int8=int8, kv_dtype=kv_dtype, ctx=ctx)
    if input_path is not None:
        run_file(
            "qa",
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

    result = get("qa").run(llm, [{"context": context, "question": question}], **options)[0]
    print_single(result, as_json, lambda r: r["answer"])


def _evaluate(pairs: list[tuple[dict, dict]]) -> tuple[dict, str]:
    from pyllm_tasks.metrics import qa_scores

    preds, golds = [], []
    for rec, res in pairs:
        answers = rec.get("answers", rec.get("answer"))
        if isinstance(answers, str):
            answers = [answers]
        if isinstance(answers, list) and all(isinstance(a, str) for a in answers):
            preds.append(res["answer"])
            golds.append(answers)
    if not preds:
        raise click.ClickException('--eval needs gold "answers" (or "answer") in the records')
    m = qa_scores(preds, golds)
    return m, f"n={m['n']}  exact_match={m['exact_match']:.4f}  f1={m['f1']:.4f}"
