"""`pyllm classify`'s default prompt and calibration: the ones docs/tasks.md documents (chosen
there by bench/eval_classify.py), and better than the previous default on obvious sentiment."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyllm
from pyllm_tasks import classify as C

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["positive", "negative"]
OBVIOUS = [
    ("An absolute masterpiece, I loved every minute of it.", "positive"),
    ("The acting was wonderful and the story moved me to tears.", "positive"),
    ("A delightful, funny and charming film.", "positive"),
    ("Brilliant direction and a superb cast; highly recommended.", "positive"),
    ("One of the best movies I have seen this year.", "positive"),
    ("A beautiful, uplifting story that I will happily watch again.", "positive"),
    ("A boring, tedious mess that wasted two hours of my life.", "negative"),
    ("The acting was terrible and the plot made no sense.", "negative"),
    ("One of the worst films I have ever seen.", "negative"),
    ("Dull, predictable and painfully unfunny.", "negative"),
    ("I hated it; the dialogue was awful and the ending was stupid.", "negative"),
    ("A complete disaster, avoid this movie at all costs.", "negative"),
]
# The default before the evaluation: a classifier system turn, the labels listed before the
# text, the label written as given, calibrated with three content-free inputs.
OLD_DEFAULT = {
    "SYSTEM": ("You are a text classifier. Read the text and reply with the one label from "
               "the list that fits it best, and nothing else."),
    "USER": "Labels: {labels}\n\nText: {text}",
    "ANSWER_FORMAT": "as_given",
    "CONTENT_FREE": ("N/A", "", "[MASK]"),
}


def test_docs_name_the_default_prompt_and_calibration():
    docs = (ROOT / "docs" / "tasks.md").read_text(encoding="utf-8")
    user = C.USER.replace("\n", "\\n")
    assert f"`{user}`" in docs, "docs/tasks.md does not show the default user turn"
    assert f"answer format: `{C.ANSWER_FORMAT}`" in docs
    cf = ", ".join(f'"{x}"' for x in C.CONTENT_FREE)
    assert f"content-free inputs: {cf}" in docs
    system = "none (the chat template's own)" if C.SYSTEM is None else f"`{C.SYSTEM}`"
    assert f"system turn: {system}" in docs


def _accuracy(llm) -> float:
    # A fresh adapter: its content-free probabilities are cached per model and settings.
    res = C.ClassifyTask().run(llm, [{"text": t} for t, _ in OBVIOUS], labels=LABELS)
    return sum(r["label"] == gold for r, (_, gold) in zip(res, OBVIOUS)) / len(OBVIOUS)


def test_default_beats_the_old_default_on_obvious_sentiment(smollm2_path, monkeypatch):
    llm = pyllm.load(smollm2_path)
    new = _accuracy(llm)
    with monkeypatch.context() as m:
        for name, value in OLD_DEFAULT.items():
            m.setattr(C, name, value)
        old = _accuracy(llm)
    assert new >= 9 / 12, f"the default classifies only {new:.2f} of obvious sentences right"
    assert new > old, f"default {new:.2f} is no better than the old default {old:.2f}"


@pytest.mark.parametrize("fmt, label, answer", [("as_given", "positive", "positive"),
                                                ("capitalised", "positive", "Positive"),
                                                ("capitalised", "e-mail", "E-mail"),
                                                ("leading_space", "sport", " sport")])
def test_answer_format(monkeypatch, fmt, label, answer):
    monkeypatch.setattr(C, "ANSWER_FORMAT", fmt)
    assert C.answer_text(label) == answer
