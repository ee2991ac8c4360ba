"""Top-10 log-probs of pyllm's exact path on a K-quant GGUF against the dequantized model.

    python bench/kquant_logprobs.py                     # $PYLLM_HOME/bench/...Q4_K_M.gguf
    python bench/kquant_logprobs.py --model FILE.gguf --tol 1e-3

The exact path keeps the file's blocks native (the default: Q4_K, Q5_K, Q6_K, Q5_0, Q5_1
computed on as stored, float32 activations and KV-cache) and runs the model as pyllm does
(`ModelRunner`: the fused CPU runner where it takes the weights, else `GPT.forward` op by op; the
two give the same logits). The reference is transformers' Llama in float64
on the same file dequantized by transformers' own GGUF loader, which decodes the blocks with the
`gguf` package's dequantizers: an implementation independent of pyllm's model code and of its
dequantizers (pyllm/weights/quant.py).

Both run teacher-forced over a few prompts (every position of each). At each position the tokens
compared are the union of both sides' top-10, and the figure is the largest |log p_pyllm -
log p_reference| in nats over all of them; the check is that it stays within `--tol` (1e-3 by
default). For scale, the same figures for pyllm's load of the file with the blocks
converted to Q8_0 at load (PYLLM_NATIVE_KQUANTS=0) and for llama-cpp-python on the same file
are printed too; those rows are not held to the tolerance. Make the file with
bench/make_kquant_models.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

PROMPTS = (
    "The history of the Roman Empire spans many centuries. It began when Augustus became the "
    "first emperor in 27 BC, and in the West it ended in 476 AD when the last emperor was "
    "deposed. During this time, Rome built roads, aqueducts and cities across Europe.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n<|im_start|>user\nWhat are three interesting facts about honeybees?"
    "<|im_end|>\n<|im_start|>assistant\nHoneybees communicate the location of flowers with a "
    "waggle dance, a colony can hold tens of thousands of workers, and",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint([fibonacci(i) for i in range(10)])\n",
)
TOP_K = 10
NATIVE_ONLY = frozenset({"q4_k", "q5_k", "q6_k", "q5_0", "q5_1"})  # kept only with the switch


def default_model() -> Path:
    from pyllm.weights.pull import pyllm_home

    return pyllm_home() / "bench" / "SmolLM2-135M-Instruct.Q4_K_M.gguf"


def load_pyllm(path: Path, native: bool):
    """pyllm.load of `path` with PYLLM_NATIVE_KQUANTS set for this load only."""
    import pyllm
    from pyllm.weights.gguf import NATIVE_KQUANTS_ENV

    before = os.environ.get(NATIVE_KQUANTS_ENV)
    os.environ[NATIVE_KQUANTS_ENV] = "1" if native else "0"
    try:
        return pyllm.load(str(path), progress=False)
    finally:
        if before is None:
            del os.environ[NATIVE_KQUANTS_ENV]
        else:
            os.environ[NATIVE_KQUANTS_ENV] = before


def weight_qtypes(llm) -> set[str]:
    """The storage types of the loaded model's weights (as computed on, after any conversion)."""
    return {
        m.weight.qtype
        for m in llm.model.gpt.modules()
        if hasattr(getattr(m, "weight", None), "qtype")
    }


def pyllm_logprobs(llm, prompts: list[list[int]]) -> list[torch.Tensor]:
    """[positions, vocab] float64 log-softmax of pyllm's forward for each prompt."""
    from pyllm.model.batch import allocate_kv_caches, build_metadata

    model, cfg = llm.model, llm.config
    block = 16
    out = []
    for ids in prompts:
        n = len(ids)
        nb = -(-n // block)
        caches = allocate_kv_caches(cfg.n_layer, nb, block, cfg.n_kv_head, cfg.head_dim)
        meta = build_metadata([0], [n], [list(range(nb))], block)
        with torch.inference_mode():
            logits = model(torch.tensor(ids), meta, caches, None)
        out.append(torch.log_softmax(logits.double(), dim=-1))
    return out


def reference_logprobs(path: Path, prompts: list[list[int]]) -> list[torch.Tensor]:
    """The same from transformers in float64 on the GGUF dequantized by transformers."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model = model.to(torch.float64).eval()
    out = []
    with torch.inference_mode():
        for ids in prompts:
            logits = model(torch.tensor([ids])).logits[0]
            out.append(torch.log_softmax(logits.double(), dim=-1))
    return out


def llama_cpp_logprobs(path: Path, prompts: list[list[int]], threads: int) -> list[torch.Tensor]:
    """The same from llama-cpp-python on the file (its own numerics: int8 activations in the
    quantized matmuls, float16 KV-cache)."""
    import llama_cpp
    import numpy as np

    n_ctx = max(256, max(len(x) for x in prompts) + 16)
    lc = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads)
    out = []
    for ids in prompts:
        lc.reset()
        lc.eval(ids)
        logits = torch.from_numpy(np.array(lc.scores[: len(ids)], dtype=np.float64))
        out.append(torch.log_softmax(logits, dim=-1))
    return out


def compare(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    """Max (and mean) |Δ log p| over both sides' top-10s at every position; top-1 agreement;
    the share of positions with the same top-10 set."""
    worst = total = 0.0
    top1 = same_set = positions = entries = 0
    for g, r in zip(got, ref, strict=True):
        tg = g.topk(TOP_K, dim=-1).indices
        tr = r.topk(TOP_K, dim=-1).indices
        for idx in (tg, tr):
            d = (g.gather(-1, idx) - r.gather(-1, idx)).abs()
            worst = max(worst, d.max().item())
            total += d.sum().item()
            entries += d.numel()
        top1 += int((tg[:, 0] == tr[:, 0]).sum())
        same_set += int((tg.sort(-1).values == tr.sort(-1).values).all(-1).sum())
        positions += g.shape[0]
    return {
        "max_abs_nats": worst,
        "mean_abs_nats": total / entries,
        "top1_agree": top1 / positions,
        "same_top10": same_set / positions,
        "positions": positions,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", help="K-quant GGUF (default: the Q4_K_M made by bench/make_kquant_models.py)"
    )
    p.add_argument("--tol", type=float, default=1e-3, help="nats (default 1e-3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-converted",
        action="store_true",
        help="skip the informational row for the Q8_0-converting load (PYLLM_NATIVE_KQUANTS=0)",
    )
    p.add_argument(
        "--no-llama-cpp",
        action="store_true",
        help="skip the informational row for llama-cpp-python on the same file",
    )
    a = p.parse_args(argv)
    path = Path(a.model) if a.model else default_model()
    if not path.is_file():
        print(
            f"error: --model: {path} is not a file (make it with bench/make_kquant_models.py)",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(a.threads)
    llm = load_pyllm(path, native=True)
    native = sorted(weight_qtypes(llm) & NATIVE_ONLY)
    if not native:
        print(
            f"error: {path.name}: no Q4_K/Q5_K/Q6_K/Q5_0/Q5_1 weight stayed native "
            f"(types computed on: {', '.join(sorted(weight_qtypes(llm)))})",
            file=sys.stderr,
        )
        return 2
    prompts = [llm.tokenizer.encode(s, add_bos=None, parse_special=True) for s in PROMPTS]
    rows = [("exact (native blocks)", pyllm_logprobs(llm, prompts))]
    del llm
    if not a.no_converted:
        rows.append(
            (
                "converted to Q8_0 (PYLLM_NATIVE_KQUANTS=0)",
                pyllm_logprobs(load_pyllm(path, native=False), prompts),
            )
        )
    if not a.no_llama_cpp:
        rows.append(("llama.cpp (int8 activations)", llama_cpp_logprobs(path, prompts, a.threads)))
    ref = reference_logprobs(path, prompts)

    from pyllm.weights.gguf import load_gguf

    types = sorted({t.type_name.upper() for t in load_gguf(path).tensors.values()})
    n_pos = sum(len(x) for x in prompts)
    print(
        f"{path.name} ({', '.join(types)}): {len(prompts)} prompts, {n_pos} positions, "
        f"teacher-forced; reference: transformers float64 on the dequantized weights; "
        f"the exact path computed on {', '.join(q.upper() for q in native)} as stored"
    )
    print(
        f"{'path':28s} {'max |d logp| top-10':>20s} {'mean':>10s} {'top-1 agree':>12s} "
        f"{'same top-10':>12s}"
    )
    ok = True
    for i, (name, got) in enumerate(rows):
        m = compare(got, ref)
        verdict = ""
        if i == 0:
            within = m["max_abs_nats"] <= a.tol
            ok = within
            verdict = f"  {'within' if within else 'NOT within'} {a.tol:g} nats"
        print(
            f"{name:28s} {m['max_abs_nats']:20.3e} {m['mean_abs_nats']:10.2e} "
            f"{m['top1_agree']:12.1%} "
            f"{m['same_top10']:12.1%}{verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
