"""Time one sampling step: pyllm's fused sampler kernel against a plain PyTorch sampler.

    python bench/sampling.py [--threads 2] [--repeats 15] [--vocab 49152] [--batch 1 8 64]

Logits [B, V] (V = 49,152, SmolLM2's vocabulary), float32, drawn N(0, 3^2). Two settings:
"chat" (repetition penalty 1.1 over the last 64 tokens, top-k 40, top-p 0.95, min-p 0.05,
temperature 0.8) and "top-p" (top-p 0.9, temperature 0.8: the sort-heavy case). Contenders:

- torch: the usual PyTorch sampler, batched over rows: penalties by gather/scatter, top-k by
  torch.topk, top-p by a full sort + softmax + cumsum, min-p, temperature, torch.multinomial.
- pyllm kernel: `pyllm::sample_tokens` on prebuilt parameter tensors (the op with its checks).
- pyllm Sampler: `pyllm.sampler.Sampler.sample` from SamplingParams (packing the per-row
  tensors from Python objects included), what the engine calls.

Figures: median microseconds per step over `--repeats` timings (the three timed round-robin, so
load swings on a shared machine hit them alike), and torch's time divided by pyllm's (higher is
better for pyllm).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyllm.ops as ops
from pyllm import _C
from pyllm.sampler import Sampler
from pyllm.sampling_params import SamplingParams

SETTINGS = {
    "chat": dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1),
    "top-p": dict(temperature=0.8, top_p=0.9),
}
WINDOW = 64


def calls_per_timing(fn, min_time: float) -> int:
    """How many calls one timing needs to last at least min_time."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_time:
            return n
        n *= 2


def median_us(fns: dict, repeats: int, min_time: float = 0.05) -> dict:
    """Median microseconds per call of each function. The contenders are timed round-robin
    (one timing of each per repeat), so load swings on a shared machine hit them alike."""
    counts = {name: calls_per_timing(fn, min_time) for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            times[name].append((time.perf_counter() - t) / counts[name])
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def torch_sampler(logits, recent, temperature, top_k, top_p, min_p, repetition, generator):
    """A plain PyTorch sampler, batched: the way samplers are commonly written."""
    logits = logits.clone()
    if bool((repetition != 1.0).any()):
        seen = torch.gather(logits, 1, recent)
        seen = torch.where(seen > 0, seen / repetition[:, None], seen * repetition[:, None])
        logits.scatter_(1, recent, seen)
    if bool((top_k > 0).any()):
        k = int(top_k.max())
        kth = torch.topk(logits, k, dim=-1).values.gather(1, (top_k.clamp(min=1) - 1)[:, None])
        logits = torch.where((top_k[:, None] > 0) & (logits < kth), float("-inf"), logits)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    cum = torch.cumsum(sorted_probs, dim=-1)
    remove = (cum - sorted_probs) >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    if bool((min_p > 0).any()):
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values,
                                    float("-inf"))
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    V = args.vocab
    print(f"sampling step, V = {V:,}, {args.threads} threads, torch {torch.__version__}, "
          f"CPU ISA {_C.cpu_isa()}; median us per step over {args.repeats} timings")
    print(f"{'setting':8} {'B':>3} {'torch':>10} {'pyllm kernel':>13} {'pyllm Sampler':>14} "
          f"{'torch/kernel':>13} {'torch/Sampler':>14}")
    g = torch.Generator().manual_seed(0)
    for name, s in SETTINGS.items():
        for B in args.batch:
            logits = torch.randn(B, V, generator=g) * 3
            recent = torch.randint(0, V, (B, WINDOW), generator=g)
            params = [SamplingParams(seed=b, penalty_last_n=WINDOW, **s) for b in range(B)]
            prompts = [recent[b].tolist() for b in range(B)]
            outputs: list[list[int]] = [[] for _ in range(B)]

            col = lambda key, default: torch.tensor([getattr(p, key) for p in params])  # noqa: E731
            t, k, tp = col("temperature", 1.0).float(), col("top_k", 0), col("top_p", 1.0).float()
            mp, rp = col("min_p", 0.0).float(), col("repetition_penalty", 1.0).float()
            gen = torch.Generator().manual_seed(1)
            fparams = torch.stack([t, tp, mp, torch.ones(B), rp, torch.zeros(B), torch.zeros(B)], 1)
            iparams = torch.stack([k, torch.arange(B), torch.full((B,), WINDOW)], 1)
            sampler = Sampler()
            us = median_us({
                "torch": lambda: torch_sampler(logits, recent, t, k, tp, mp, rp, gen),
                "kernel": lambda: ops.sample_tokens(logits, fparams, iparams, recent),
                "sampler": lambda: sampler.sample(logits, params, prompts, outputs),
            }, args.repeats)
            t_torch, t_kernel, t_sampler = us["torch"], us["kernel"], us["sampler"]
            print(f"{name:8} {B:>3} {t_torch:>10.0f} {t_kernel:>13.0f} {t_sampler:>14.0f} "
                  f"{t_torch / t_kernel:>12.1f}x {t_torch / t_sampler:>13.1f}x", flush=True)


if __name__ == "__main__":
    main()
