"""How far the opt-in int8-activation path moves the model's logits from the exact path.

    python bench/int8_error.py [--model smollm2] [--text FILE] [--no-llama-cpp]

Runs one English prompt through the fast CPU forward three ways and compares every position's
logits with the exact (float32-activation) path:

  int8 (prepacked)   model.int8_activations = True on this CPU (AVX-512: prepacked panels)
  int8 (avx2)        the same with the kernels capped at AVX2 (per-call panels)
  llama.cpp          llama-cpp-python's logits on the same GGUF (int8 activations, f16 KV cache)

Figures: top-1 agreement with the exact path, mean and max |delta logit|, and the max relative to
the largest exact logit. Not a test: the numbers are reported in docs/kernels.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DEFAULT_TEXT = (
    "The history of the Roman Empire spans many centuries. It began when Augustus became the "
    "first emperor in 27 BC, and in the West it ended in 476 AD when the last emperor was "
    "deposed. During this time, Rome built roads, aqueducts and cities across Europe.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--text", type=Path, help="prompt file (default: a 59-token English paragraph)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    args = ap.parse_args()

    import pyllm
    from pyllm import _C
    from pyllm.model.batch import allocate_kv_caches, build_metadata

    llm = pyllm.load(args.model, progress=False)
    model, cfg = llm.model, llm.config
    text = args.text.read_text() if args.text else DEFAULT_TEXT
    ids = torch.tensor(llm.tokenizer.encode(text)[:1024])
    n = len(ids)
    nb = (n + 15) // 16
    isa0 = _C.cpu_isa()

    def logits(int8: bool, isa: str | None = None) -> torch.Tensor:
        if isa:
            _C.set_cpu_isa(isa)
        model.int8_activations = int8
        try:
            caches = allocate_kv_caches(cfg.n_layer, nb, 16, cfg.n_kv_head, cfg.head_dim, torch.float32)
            with torch.inference_mode():
                return model(ids, build_metadata([0], [n], [list(range(nb))], 16), caches, None)
        finally:
            model.int8_activations = False
            _C.set_cpu_isa(isa0)

    exact = logits(False)
    rows = [("int8 (" + isa0 + ")", logits(True))]
    if isa0 == "avx512":
        rows.append(("int8 (avx2)", logits(True, "avx2")))
    if not args.no_llama_cpp:
        try:
            import llama_cpp
            import numpy as np

            lc = llama_cpp.Llama(str(llm.loaded.path), n_ctx=max(256, n + 16), logits_all=True,
                                 verbose=False, n_threads=2)
            lc.eval(ids.tolist())
            rows.append(("llama.cpp", torch.tensor(np.array(lc.scores[:n]), dtype=torch.float32)))
        except ImportError:
            print("(llama-cpp-python not installed: no llama.cpp row)")
    top = exact.abs().max().item()
    print(f"{n} positions of {Path(str(llm.loaded.path)).name}; exact logits span +-{top:.1f}")
    print(f"{'path':18s} {'top-1 agree':>11s} {'mean |d|':>9s} {'max |d|':>8s} {'max/top':>8s}")
    for name, x in rows:
        d = (x - exact).abs()
        agree = (x.argmax(-1) == exact.argmax(-1)).float().mean().item()
        print(f"{name:18s} {agree:11.3f} {d.mean().item():9.3f} {d.max().item():8.3f} {d.max().item() / top:8.3f}")


if __name__ == "__main__":
    main()
