"""Metrics for the tasks' --eval modes and bench/eval_tasks.py.

Classification: accuracy, macro-F1 (the unweighted mean of per-label F1, so a small class counts
as much as a large one) and the confusion matrix. QA: SQuAD-style exact match and token F1 after
normalising case, punctuation and articles. Translation: sacrebleu's corpus chrF and BLEU
(sacrebleu is needed only for that).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any


def classification_report(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """accuracy, macro_f1, per-label precision/recall/f1, confusion[gold][pred] counts."""
    if len(gold) != len(pred):
        raise ValueError("gold and predicted labels differ in number")
    index = {lab: i for i, lab in enumerate(labels)}
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for g, p in zip(gold, pred):
        if g not in index:
            raise ValueError(f"gold label {g!r} is not one of the labels")
        confusion[index[g]][index[p]] += 1
    per_label = {}
    f1s = []
    for i, lab in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(n))
        actual = sum(confusion[i])
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": actual}
        f1s.append(f1)
    total = len(gold)
    return {
        "n": total,
        "accuracy": sum(confusion[i][i] for i in range(n)) / total if total else 0.0,
        "macro_f1": sum(f1s) / n if n else 0.0,
        "per_label": per_label,
        "labels": list(labels),
        "confusion": confusion,
    }


def format_confusion(report: dict[str, Any]) -> str:
    """The confusion matrix as a text table (rows: gold, columns: predicted)."""
    labels = report["labels"]
    width = max(8, *(len(lab) for lab in labels)) + 1
    lines = ["gold \\ pred".ljust(width) + "".join(lab[: width - 1].rjust(width) for lab in labels)]
    for lab, row in zip(labels, report["confusion"]):
        lines.append(lab.ljust(width) + "".join(str(c).rjust(width) for c in row))
    return "\n".join(lines)


def format_classification(report: dict[str, Any]) -> str:
    return (
        f"n={report['n']}  accuracy={report['accuracy']:.4f}  "
        f"macro-F1={report['macro_f1']:.4f}\n{format_confusion(report)}"
    )


def _normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def qa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1, each the best over a question's gold answers, averaged."""
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers):
        p = _normalize_answer(pred)
        best_em = best_f1 = 0.0
        for g in golds:
            gn = _normalize_answer(g)
            best_em = max(best_em, float(p == gn))
            pt, gt = p.split(), gn.split()
            common = sum((Counter(pt) & Counter(gt)).values())
            if pt and gt and common:
                prec, rec = common / len(pt), common / len(gt)
                best_f1 = max(best_f1, 2 * prec * rec / (prec + rec))
            elif not pt and not gt:
                best_f1 = max(best_f1, 1.0)
        em += best_em
        f1 += best_f1
    n = max(len(predictions), 1)
    return {"n": len(predictions), "exact_match": em / n, "f1": f1 / n}


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacrebleu corpus chrF and BLEU (default settings, 13a tokenisation)."""
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("translation metrics need sacrebleu: pip install sacrebleu") from e
    refs = [list(references)]
    chrf_metric, bleu_metric = sacrebleu.CHRF(), sacrebleu.BLEU()
    chrf = chrf_metric.corpus_score(list(hypotheses), refs)
    bleu = bleu_metric.corpus_score(list(hypotheses), refs)
    return {
        "n": len(hypotheses),
        "chrf": chrf.score,
        "bleu": bleu.score,
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_signature": str(bleu_metric.get_signature()),
    }
