"""``pyllm classify`` (this plugin's ``register_commands``): pick a label for a text by scoring
every label's log-likelihood."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pyllm.cli_options import JOB_HELP, check_io, input_options, print_single, text_argument

HELP = """Classify TEXT (or every record of -i IN.jsonl) with one of the labels.

\b
Every label is scored as the model's answer (its log-likelihood after the prompt); the scores
become a probability per label, corrected by contextual calibration (the same prompt with
content-free inputs such as "N/A"; --no-calibrate turns it off).
\b
Output: the label and the probabilities; --json: {"label", "scores": {label: probability}}.
JSONL: lines in {"id", "text"}, out {"id", "label", "scores"}; --eval reads each record's gold
"label" and prints accuracy, macro-F1 and the confusion matrix.
"""


def _parse_example(value: str) -> dict[str, str]:
    label, eq, text = value.partition("=")
    if not eq or not label.strip() or not text.strip():
        raise click.BadParameter(f"expected LABEL=TEXT, got {value!r}", param_hint="--example")
    return {"label": label.strip(), "text": text.strip()}


def _read_examples(path: Path) -> list[dict[str, str]]:
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"{path}:{n}: {e}", param_hint="--examples-file") from e
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("text"), str)
            or not isinstance(obj.get("label"), str)
        ):
            raise click.BadParameter(
                f'{path}:{n}: expected {{"text", "label"}}', param_hint="--examples-file"
            )
        out.append({"text": obj["text"], "label": obj["label"]})
    return out


@click.command(
    "classify",
    help=f"{HELP}\n{JOB_HELP}",
    short_help="Classify text by scoring each label (calibrated).",
)
@click.argument("text", required=False)
@click.option("--labels", help="Comma-separated labels, e.g. sport,politics,tech.")
@click.option(
    "--labels-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file with one label a line.",
)
@click.option(
    "--example",
    "examples",
    multiple=True,
    metavar="LABEL=TEXT",
    help="A few-shot example (repeatable).",
)
@click.option(
    "--examples-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Few-shot examples, JSONL lines {"text", "label"}.',
)
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Contextual calibration with content-free inputs.",
)
@click.option(
    "--multi-label",
    is_flag=True,
    help="Every label whose probability reaches --threshold (a yes/no question each).",
)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option(
    "--length-normalize",
    is_flag=True,
    help="Score labels by mean token log-prob instead of the sum.",
)
@click.option("--instruction", help="Replace the default classification instruction.")
@click.option(
    "--generate",
    is_flag=True,
    help="Let the model write the label, constrained to one of the labels (one decode "
    "per text; no scores, no calibration) instead of scoring every label.",
)
@input_options
def classify(
    text: str | None,
    labels: str | None,
    labels_file: Path | None,
    examples: tuple[str, ...],
    examples_file: Path | None,
    calibrate: bool,
    multi_label: bool,
    threshold: float,
    length_normalize: bool,
    instruction: str | None,
    generate: bool,
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
    from pyllm_tasks.classify import read_labels

    if (labels is None) == (labels_file is None):
        raise click.UsageError("give the labels: --labels a,b,c or --labels-file FILE")
    spec = labels_file if labels_file is not None else labels
    assert spec is not None  # exactly one of the two, checked above
    label_list = read_labels(spec)
    shots = [_parse_example(e) for e in examples]
    if examples_file is not None:
        shots += _read_examples(examples_file)
    check_io(input_path, output_path, evaluate, text is not None)
    options: dict[str, Any] = {
        "labels": label_list,
        "examples": shots,
        "calibrate": calibrate,
        "multi_label": multi_label,
        "threshold": threshold,
        "normalize": length_normalize,
        "instruction": instruction,
    }
    if generate:
        if multi_label:
            raise click.UsageError(
                "--generate picks one label; it does not combine with --multi-label"
            )
        options["generate"] = True
    if input_path is None:
        text = text_argument(text)
    from pyllm.cli_options import load_llm, run_file

    llm = load_llm(model, device, int8=int8, kv_dtype=kv_dtype, ctx=ctx)
    if input_path is not None:
        run_file(
            "classify",
            llm,
            input_path,
            output_path,
            options,
            batch_size=batch_size,
            progress=progress,
            evaluate=_evaluator(label_list) if evaluate else None,
            as_json=as_json,
            retry_errors=retry_errors,
        )
        return
    from pyllm.tasks import get

    result = get("classify").run(llm, [{"text": text}], **options)[0]
    print_single(result, as_json, _describe)


def _describe(res: Any) -> str:
    head = ", ".join(res["labels"]) or "(none)" if "labels" in res else res["label"]
    if "scores" not in res:  # --generate: the label only
        return head
    rows = [
        f"  {lab:<20} {p:.3f}" for lab, p in sorted(res["scores"].items(), key=lambda kv: -kv[1])
    ]
    return "\n".join([head, *rows])


def _evaluator(labels: list[str]) -> Any:
    def evaluate(pairs: list[tuple[dict, dict]]) -> tuple[dict, str]:
        from pyllm_tasks.metrics import classification_report, format_classification

        gold_pred = [
            (gold, res["label"]) for rec, res in pairs if isinstance(gold := rec.get("label"), str)
        ]
        if not gold_pred:
            raise click.ClickException('--eval needs a gold "label" in the input records')
        report = classification_report([g for g, _ in gold_pred], [p for _, p in gold_pred], labels)
        return report, format_classification(report)

    return evaluate
