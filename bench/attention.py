"""Time pyllm's CPU paged attention against its reference and torch's SDPA.

    python bench/attention.py [--threads 2] [--repeats 15] [--cache-dtype float32]

SmolLM2-135M shapes (9 query heads, 3 KV heads, head dim 64, block size 16): decode (one query)
at context 128 / 1024 / 4096, and a 256-token prefill. pyllm runs on the paged cache (blocks in
a shuffled order); SDPA runs on K/V already gathered into contiguous [1, H, ctx, D] tensors (the
gather is not timed), with GQA expanded beforehand. Figures: median microseconds per call over
`--repeats` rounds (each round times a batch of calls of every candidate in turn, so load swings
on a shared machine hit them alike), and SDPA's and the reference's time divided by pyllm's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from pyllm import _C
from pyllm.ops import attention as A

HQ, HKV, D, BS = 9, 3, 64, 16


def calls_per_timing(fn, min_time: float) -> int:
    """How many calls make one timing last at least min_time."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_time:
            return n
        n *= 2


def interleaved_medians(fns: dict, repeats: int, min_time: float = 0.02) -> dict:
    """Median µs per call of each function, timed round-robin (one batch of calls each per
    round) so that the machine's load swings hit every candidate alike."""
    counts = {name: calls_per_timing(fn, min_time) for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = counts[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t) / n)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def setup(q_len: int, ctx: int, cache_dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    nblk = -(-ctx // BS)
    order = torch.randperm(nblk + 8, generator=g)[:nblk]
    k_cache = torch.randn(nblk + 8, BS, HKV, D, generator=g).to(cache_dtype)
    v_cache = torch.randn(nblk + 8, BS, HKV, D, generator=g).to(cache_dtype)
    q = torch.randn(q_len, HQ, D, generator=g)
    meta = (torch.tensor([0, q_len], dtype=torch.int32), torch.tensor([ctx], dtype=torch.int32),
            order.to(torch.int32)[None, :])
    # Contiguous K/V for SDPA: [1, Hq, ctx, D] (GQA expanded), float32 like the query.
    k = k_cache[order].reshape(-1, HKV, D)[:ctx].float().permute(1, 0, 2).repeat_interleave(HQ // HKV, 0)[None]
    v = v_cache[order].reshape(-1, HKV, D)[:ctx].float().permute(1, 0, 2).repeat_interleave(HQ // HKV, 0)[None]
    return q, k_cache, v_cache, meta, k.contiguous(), v.contiguous()


def bench_case(name: str, q_len: int, ctx: int, repeats: int, cache_dtype: torch.dtype) -> dict:
    q, k_cache, v_cache, (qs, cl, bt), k, v = setup(q_len, ctx, cache_dtype)
    scale = 1 / math.sqrt(D)
    args = (q, k_cache, v_cache, qs, cl, bt, scale, 0)
    A.check_attention_metadata(*args)
    out = torch.empty_like(q)
    qt = q.permute(1, 0, 2)[None].contiguous()  # [1, Hq, q_len, D]
    causal = q_len > 1
    sdpa_out = F.scaled_dot_product_attention(qt, k, v, is_causal=causal, scale=scale)[0].permute(1, 0, 2)
    err = (A.paged_attention(*args) - sdpa_out).abs().max().item()
    row = {"case": name, "max |pyllm - sdpa|": err}
    row.update(interleaved_medians({
        "pyllm (hot path)": lambda: A.paged_attention(*args, validated=True, out=out),
        "pyllm (checked op)": lambda: A.paged_attention(*args),
        "reference": lambda: A.paged_attention_ref(*args),
        "sdpa": lambda: F.scaled_dot_product_attention(qt, k, v, is_causal=causal, scale=scale),
    }, repeats))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _C.set_num_threads(a.threads)
    cache_dtype = getattr(torch, a.cache_dtype)
    print(f"threads {a.threads}, ISA {_C.cpu_isa()}, cache {a.cache_dtype}, torch {torch.__version__}; "
          f"Hq {HQ}, Hkv {HKV}, D {D}, block {BS}; median µs per call")
    rows = [bench_case(f"decode ctx {c}", 1, c, a.repeats, cache_dtype) for c in (128, 1024, 4096)]
    rows.append(bench_case("prefill 256", 256, 256, a.repeats, cache_dtype))
    cols = ["pyllm (hot path)", "pyllm (checked op)", "reference", "sdpa"]
    print(f"{'case':<16}" + "".join(f"{c:>20}" for c in cols) + f"{'sdpa / pyllm':>14}{'ref / pyllm':>13}{'max err':>10}")
    for r in rows:
        print(f"{r['case']:<16}" + "".join(f"{r[c]:>20.1f}" for c in cols)
              + f"{r['sdpa'] / r['pyllm (hot path)']:>14.2f}{r['reference'] / r['pyllm (hot path)']:>13.1f}"
              + f"{r['max |pyllm - sdpa|']:>10.1e}")


if __name__ == "__main__":
    main()
