"""Classification by label scoring, with contextual calibration.

Each label is scored as the model's answer to the prompt: the log-likelihood of the label's
tokens (and the end of the answer: the template's end-of-turn token, or a newline for a base
model) after the prompt, all labels batched with the prompt prefilled once
(:mod:`pyllm.scoring`). The probability of a label is the softmax of these scores over the
label set.

Scores are *summed* over the label's tokens, not length-normalised: exp(sum) is the model's
probability of producing exactly that answer, so the softmax is a proper distribution over the
candidate answers. The later tokens of a multi-token label are nearly certain once its first
token is chosen and add almost nothing, so long labels are not penalised much; averaging
instead would reward a label for its easy tail tokens and stop being a probability. Whatever
bias remains between labels (length included) is what calibration removes. ``normalize=True``
uses the per-token mean instead, for comparison.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"), on by default: the same
prompt is scored with content-free inputs ("N/A", "", "[MASK]") in place of the text; their
label distributions are averaged into p_cf, and each label's probability is divided by its
p_cf and renormalised. A model that says "sport" to anything then no longer says it to
everything.

Multi-label: each label becomes its own yes/no question ("Does the label X apply?"), scored
the same way and calibrated per label with the content-free inputs; every label whose
probability of "Yes" reaches the threshold is returned.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyllm.types import Message
from pyllm_tasks import prompts as P

CONTENT_FREE = ("N/A", "", "[MASK]")

# The default prompt and calibration, chosen by bench/eval_classify.py (docs/tasks.md has the
# table). SYSTEM: the system turn (None: none, the chat template's own). USER: the user turn,
# with {text}, {labels} ("a, b, c") and {labels_or} ("a, b or c"). ANSWER_FORMAT: how a label
# is written as the assistant's answer that is scored: "as_given", "capitalised" (first letter
# upper case) or "leading_space" (" label": measured best with calibration, though odd to read).
SYSTEM: str | None = None
USER = "{text}\n\nIs this text {labels_or}? Answer with one word."
ANSWER_FORMAT = "leading_space"
SYSTEM_BINARY = "You are a text classifier. Answer Yes or No."
YES_NO = ("Yes", "No")


def read_labels(spec: str | Sequence[str] | Path) -> list[str]:
    """Labels from a list, a comma-separated string, or a file (one label a line; `#` lines
    and blank lines skipped). Duplicates and empty labels are refused."""
    if isinstance(spec, Path):
        lines = spec.read_text(encoding="utf-8").splitlines()
        labels = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    elif isinstance(spec, str):
        labels = [s.strip() for s in spec.split(",")]
    else:
        labels = [str(s).strip() for s in spec]
    if any(not s for s in labels):
        raise ValueError("labels must be non-empty strings")
    if len(labels) < 2 and not isinstance(spec, Path):
        raise ValueError(f"give at least two labels, got {labels}")
    if len(set(labels)) != len(labels):
        dup = next(s for s in labels if labels.count(s) > 1)
        raise ValueError(f"label {dup!r} is given twice")
    return labels


def answer_text(label: str) -> str:
    """The label as the assistant's answer is scored (ANSWER_FORMAT); results name the label."""
    if ANSWER_FORMAT == "capitalised":
        return label[:1].upper() + label[1:]
    return " " + label if ANSWER_FORMAT == "leading_space" else label


def calibrate_probs(probs: Sequence[float], content_free: Sequence[Sequence[float]]) -> list[float]:
    """Divide each label's probability by its mean content-free probability, renormalise."""
    n = len(probs)
    if not content_free:
        return list(probs)
    cf = [sum(row[i] for row in content_free) / len(content_free) for i in range(n)]
    q = [p / max(c, 1e-30) for p, c in zip(probs, cf)]
    total = sum(q)
    return [x / total for x in q] if total > 0 else [1.0 / n] * n


def softmax(scores: Sequence[float]) -> list[float]:
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return [x / z for x in e]


def _check_examples(examples: Sequence[Any], labels: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for ex in examples:
        if isinstance(ex, Mapping):
            text, label = ex.get("text"), ex.get("label")
        else:
            text, label = ex
        if not isinstance(text, str) or not isinstance(label, str):
            raise ValueError("a few-shot example needs a string text and label")
        if label not in labels:
            raise ValueError(f"few-shot example label {label!r} is not one of the labels")
        out.append((text, label))
    return out


class ClassifyTask:
    """The `classify` task adapter (see the module docstring)."""

    name = "classify"
    description = "Pick the label of a text by scoring every label's log-likelihood."
    input_fields = ("text",)

    def __init__(self) -> None:
        self._scorers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._cf_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ---------------------------------------------------------------- prompts

    def _messages(
        self,
        text: str,
        labels: Sequence[str],
        examples: Sequence[tuple[str, str]],
        instruction: str | None = None,
    ) -> list[Message]:
        fields = {
            "labels": ", ".join(labels),
            "labels_or": f"{', '.join(labels[:-1])} or {labels[-1]}",
        }
        system = instruction or SYSTEM
        msgs: list[Message] = [{"role": "system", "content": system}] if system else []
        for ex_text, ex_label in examples:
            msgs.append({"role": "user", "content": USER.format(text=ex_text, **fields)})
            msgs.append({"role": "assistant", "content": answer_text(ex_label)})
        msgs.append({"role": "user", "content": USER.format(text=text, **fields)})
        return msgs

    def _plain(
        self,
        text: str,
        labels: Sequence[str],
        examples: Sequence[tuple[str, str]],
        instruction: str | None = None,
    ) -> str:
        head = (
            f"{instruction or 'Classify each text with one of these labels'}: "
            f"{', '.join(labels)}.\n\n"
        )
        shots = "".join(f"Text: {t}\nLabel: {lab}\n\n" for t, lab in examples)
        return f"{head}{shots}Text: {text}\nLabel:"

    def _binary_messages(self, text: str, label: str) -> list[Message]:
        return [
            {"role": "system", "content": SYSTEM_BINARY},
            {
                "role": "user",
                "content": f'Text: {text}\n\nDoes the label "{label}" apply '
                f"to this text? Answer Yes or No.",
            },
        ]

    def _binary_plain(self, text: str, label: str) -> str:
        return f'Text: {text}\nQuestion: does the label "{label}" apply to this text?\nAnswer:'

    def build(
        self,
        llm: Any,
        text: str,
        labels: Sequence[str],
        examples: Sequence[tuple[str, str]] = (),
        instruction: str | None = None,
    ) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, one continuation per label) for single-label classification."""
        if P.prompt_style(llm) == "chat":
            msgs = self._messages(text, labels, examples, instruction)
            return P.chat_ids(llm, msgs), self._label_ids(llm, labels, msgs)
        prompt = self._plain(text, labels, examples, instruction)
        return P.plain_ids(llm, prompt), [
            P.plain_continuation(llm, prompt, " " + lab) for lab in labels
        ]

    def _label_ids(self, llm: Any, labels: Sequence[str], msgs: list[Message]) -> list[list[int]]:
        # The tokens after the generation prompt do not depend on the text: one probe prompt.
        probe: list[Message] = [*msgs[:-1], {"role": "user", "content": "x"}]
        return [P.answer_continuation(llm, probe, answer_text(lab)) for lab in labels]

    def build_binary(self, llm: Any, text: str, label: str) -> tuple[list[int], list[list[int]]]:
        if P.prompt_style(llm) == "chat":
            msgs = self._binary_messages(text, label)
            return P.chat_ids(llm, msgs), [P.answer_continuation(llm, msgs, a) for a in YES_NO]
        prompt = self._binary_plain(text, label)
        return P.plain_ids(llm, prompt), [
            P.plain_continuation(llm, prompt, " " + a) for a in YES_NO
        ]

    # ---------------------------------------------------------------- scoring

    def scorer(self, llm: Any) -> Any:
        """The model's ContinuationScorer (kept, so shared prefixes stay cached)."""
        from pyllm.scoring import ContinuationScorer

        s = self._scorers.get(llm)
        if s is None:
            s = ContinuationScorer(llm.model)
            self._scorers[llm] = s
        return s

    def label_probs(
        self,
        llm: Any,
        requests: Sequence[tuple[list[int], list[list[int]]]],
        normalize: bool = False,
    ) -> list[list[float]]:
        """Softmax over each request's continuation scores (summed, or mean per token)."""
        scored = self.scorer(llm).score(requests)
        return [softmax([s.mean if normalize else s.logprob for s in row]) for row in scored]

    def content_free_probs(
        self,
        llm: Any,
        labels: Sequence[str],
        examples: Sequence[tuple[str, str]],
        normalize: bool,
        multi_label: bool,
        instruction: str | None = None,
    ) -> list[Any]:
        """p_cf per content-free input: [n_cf][n_labels] (multi-label: [label][n_cf][yes, no]
        flattened as [n_labels][P(yes) per cf input]). Cached per model and settings."""
        key = (tuple(labels), tuple(examples), normalize, multi_label, instruction)
        cache = self._cf_cache.setdefault(llm, {})
        if key not in cache:
            if multi_label:
                reqs = [self.build_binary(llm, cf, lab) for lab in labels for cf in CONTENT_FREE]
                probs = self.label_probs(llm, reqs, normalize)
                n = len(CONTENT_FREE)
                cache[key] = [probs[i * n : (i + 1) * n] for i in range(len(labels))]
            else:
                reqs = [self.build(llm, cf, labels, examples, instruction) for cf in CONTENT_FREE]
                cache[key] = self.label_probs(llm, reqs, normalize)
        return cache[key]

    # ---------------------------------------------------------------- the adapter

    def run(
        self,
        llm: Any,
        records: Sequence[Mapping[str, Any]],
        *,
        labels: Any,
        examples: Sequence[Any] = (),
        calibrate: bool = True,
        multi_label: bool = False,
        threshold: float = 0.5,
        normalize: bool = False,
        instruction: str | None = None,
        generate: bool = False,
    ) -> list[dict[str, Any]]:
        """Classify each record's ``text``: ``{"label", "scores": {label: probability}}``
        (multi-label: ``"labels"`` too, every label whose probability reaches `threshold`,
        and ``"label"`` the most probable one). `instruction` replaces the default
        instruction (the system turn; a base model's first line). ``generate=True`` lets the
        model write the label instead, greedily, constrained to exactly one of the labels
        (structured output's ``choice``): ``{"label"}`` only, one decode per text instead of
        scoring every label, and no calibration."""
        labels = read_labels(labels)
        examples = _check_examples(examples, labels)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        texts = [_text(r) for r in records]
        if not texts:
            return []
        if multi_label:
            return self._run_multi(llm, texts, labels, calibrate, threshold, normalize)
        if generate:
            return self._run_generate(llm, texts, labels, examples, instruction)
        reqs = [self.build(llm, t, labels, examples, instruction) for t in texts]
        probs = self.label_probs(llm, reqs, normalize)
        if calibrate:
            cf = self.content_free_probs(llm, labels, examples, normalize, False, instruction)
            probs = [calibrate_probs(p, cf) for p in probs]
        out = []
        for p in probs:
            best = max(range(len(labels)), key=lambda i: p[i])
            out.append(
                {"label": labels[best], "scores": {lab: round(x, 6) for lab, x in zip(labels, p)}}
            )
        return out

    def _run_generate(
        self,
        llm: Any,
        texts: list[str],
        labels: list[str],
        examples: Sequence[tuple[str, str]],
        instruction: str | None,
    ) -> list[dict[str, Any]]:
        from pyllm.engine.frontend import EngineFrontend
        from pyllm.sampling_params import SamplingParams

        chat = P.prompt_style(llm) == "chat"
        if chat:
            prompts = [
                P.chat_ids(llm, self._messages(t, labels, examples, instruction)) for t in texts
            ]
        else:  # a base model continues "...Label:" with " label", as `build` scores it
            prompts = [
                P.plain_ids(llm, self._plain(t, labels, examples, instruction)) for t in texts
            ]
        options = tuple(labels) if chat else tuple(" " + lab for lab in labels)
        longest = max(len(llm.tokenizer.encode(o, add_bos=False)) for o in options)
        params = SamplingParams(temperature=0.0, max_tokens=longest + 4, choice=options)
        engine = P.engine_for(llm)
        for p in prompts:
            engine.check_request(p, params)
        results = EngineFrontend(engine).run_all(prompts, [params] * len(prompts))
        return [{"label": r[0].text.strip()} for r in results]

    def _run_multi(
        self,
        llm: Any,
        texts: list[str],
        labels: list[str],
        calibrate: bool,
        threshold: float,
        normalize: bool,
    ) -> list[dict[str, Any]]:
        reqs = [self.build_binary(llm, t, lab) for t in texts for lab in labels]
        probs = self.label_probs(llm, reqs, normalize)  # [(yes, no)] per (text, label)
        cf = self.content_free_probs(llm, labels, (), normalize, True) if calibrate else None
        out: list[dict[str, Any]] = []
        for i in range(len(texts)):
            scores: dict[str, float] = {}
            for j, lab in enumerate(labels):
                yes_no = probs[i * len(labels) + j]
                if cf is not None:
                    yes_no = calibrate_probs(yes_no, cf[j])
                scores[lab] = round(yes_no[0], 6)
            chosen = [lab for lab in labels if scores[lab] >= threshold]
            out.append(
                {
                    "label": max(labels, key=scores.__getitem__),
                    "labels": chosen,
                    "scores": scores,
                }
            )
        return out


def _text(record: Mapping[str, Any]) -> str:
    text = record.get("text") if isinstance(record, Mapping) else None
    if not isinstance(text, str):
        raise ValueError('a record needs a string "text"')
    if not text.strip():  # a score of nothing would still name a label, with confidence
        raise ValueError('"text" is empty: there is nothing to classify')
    return text
