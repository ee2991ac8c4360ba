"""Time pyllm's CPU paged attention against its reference and torch's SDPA.

    python bench/attention.py [--threads 2] [--repeats 15] [--cache-dtype float32]
    python bench/attention.py --against OLD_C.so [--rounds 5]   # before/after


SmolLM2-135M shapes (9 query heads, 3 KV heads, head dim 64, block size 16): decode (one query)
at context 128 / 1024 / 4096, and a 256-token prefill (plus decode at 4096 over 30 layers' caches
in turn, memory-bound like a real decode step). pyllm runs on the paged cache (blocks in
a shuffled order); SDPA runs on K/V already gathered into contiguous [1, H, ctx, D] tensors (the
gather is not timed), with GQA expanded beforehand. Figures: median microseconds per call over
`--repeats` rounds (each round times a batch of calls of every candidate in turn, so load swings
on a shared machine hit them alike), and SDPA's and the reference's time divided by pyllm's.

`--against` compares the hot path of this build with another build of the extension (a copy of
an older pyllm/_C*.so): two builds of one pybind11 module cannot share a process, so each round
runs one process per build, alternating, and the figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

if __name__ == "__main__" and "--child-so" in sys.argv:
    # Load the other build as pyllm._C before pyllm imports its own.
    _spec = importlib.util.spec_from_file_location("pyllm._C", sys.argv[sys.argv.index("--child-so") + 1])
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["pyllm._C"] = _mod

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pyllm import _C  # noqa: E402
from pyllm.ops import attention as A  # noqa: E402

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


def setup(q_len: int, ctx: int, cache_dtype: torch.dtype, seed: int = 0, sdpa: bool = True):
    g = torch.Generator().manual_seed(seed)
    nblk = -(-ctx // BS)
    order = torch.randperm(nblk + 8, generator=g)[:nblk]
    k_cache = torch.randn(nblk + 8, BS, HKV, D, generator=g).to(cache_dtype)
    v_cache = torch.randn(nblk + 8, BS, HKV, D, generator=g).to(cache_dtype)
    q = torch.randn(q_len, HQ, D, generator=g)
    meta = (torch.tensor([0, q_len], dtype=torch.int32), torch.tensor([ctx], dtype=torch.int32),
            order.to(torch.int32)[None, :])
    if not sdpa:
        return q, k_cache, v_cache, meta, None, None
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


CASES = [(f"decode ctx {c}", 1, c) for c in (128, 1024, 4096)] + [("prefill 256", 256, 256)]
# Decode at ctx 4096 over 30 layers' caches in turn, as in a model's decode step: ~90-180 MB of
# K/V per round, far beyond the CPU's caches, so this one measures memory traffic (where a
# half-precision cache pays off), the others mostly compute on cache-resident K/V.
COLD_CASE, COLD_LAYERS, COLD_CTX = "decode 4096 x30", 30, 4096


def cold_decode(cache_dtype: torch.dtype):
    """A function making one decode call per invocation, on the next of COLD_LAYERS caches."""
    calls = []
    for layer in range(COLD_LAYERS):
        q, k_cache, v_cache, (qs, cl, bt), _, _ = setup(1, COLD_CTX, cache_dtype, seed=layer, sdpa=False)
        args = (q, k_cache, v_cache, qs, cl, bt, 1 / math.sqrt(D), 0)
        A.check_attention_metadata(*args)
        calls.append((args, torch.empty_like(q)))
    state = [0]

    def call():
        args, out = calls[state[0]]
        state[0] = (state[0] + 1) % COLD_LAYERS
        A.paged_attention(*args, validated=True, out=out)
    return call


def hot_path_times(repeats: int, cache_dtype: torch.dtype) -> dict:
    """Median µs per hot-path call of each case (one process, this process's pyllm._C)."""
    times = {}
    for name, q_len, ctx in CASES:
        q, k_cache, v_cache, (qs, cl, bt), _, _ = setup(q_len, ctx, cache_dtype)
        args = (q, k_cache, v_cache, qs, cl, bt, 1 / math.sqrt(D), 0)
        A.check_attention_metadata(*args)
        out = torch.empty_like(q)
        times.update(interleaved_medians({name: lambda: A.paged_attention(*args, validated=True, out=out)},
                                         repeats))
    times.update(interleaved_medians({COLD_CASE: cold_decode(cache_dtype)}, repeats))
    return times


def compare_builds(a: argparse.Namespace) -> None:
    base = [sys.executable, os.path.abspath(__file__), "--threads", str(a.threads), "--repeats", str(a.repeats),
            "--cache-dtype", a.cache_dtype, "--child"]
    runs: dict = {"this build": [], "other build": []}
    for _ in range(a.rounds):
        for label, extra in (("other build", ["--child-so", a.against]), ("this build", [])):
            out = subprocess.run(base + extra, capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    print(f"threads {a.threads}, cache {a.cache_dtype}; other build {a.against}; "
          f"median µs per hot-path call over {a.rounds} rounds of alternating processes")
    print(f"{'case':<16}{'other build':>14}{'this build':>14}{'other / this':>14}")
    for name in [c[0] for c in CASES] + [COLD_CASE]:
        old = statistics.median(r[name] for r in runs["other build"])
        new = statistics.median(r[name] for r in runs["this build"])
        print(f"{name:<16}{old:>14.1f}{new:>14.1f}{old / new:>14.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--against", metavar="SO", help="another build of pyllm._C to compare the hot path with")
    p.add_argument("--rounds", type=int, default=5, help="alternating process pairs for --against")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-so", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _C.set_num_threads(a.threads)
    cache_dtype = getattr(torch, a.cache_dtype)
    if a.against:
        compare_builds(a)
        return
    if a.child:
        print(json.dumps(hot_path_times(a.repeats, cache_dtype)))
        return
    print(f"threads {a.threads}, ISA {_C.cpu_isa()}, cache {a.cache_dtype}, torch {torch.__version__}; "
          f"Hq {HQ}, Hkv {HKV}, D {D}, block {BS}; median µs per call")
    rows = [bench_case(name, q_len, ctx, a.repeats, cache_dtype) for name, q_len, ctx in CASES]
    cols = ["pyllm (hot path)", "pyllm (checked op)", "reference", "sdpa"]
    print(f"{'case':<16}" + "".join(f"{c:>20}" for c in cols) + f"{'sdpa / pyllm':>14}{'ref / pyllm':>13}{'max err':>10}")
    for r in rows:
        print(f"{r['case']:<16}" + "".join(f"{r[c]:>20.1f}" for c in cols)
              + f"{r['sdpa'] / r['pyllm (hot path)']:>14.2f}{r['reference'] / r['pyllm (hot path)']:>13.1f}"
              + f"{r['max |pyllm - sdpa|']:>10.1e}")
    cold = interleaved_medians({COLD_CASE: cold_decode(cache_dtype)}, a.repeats)[COLD_CASE]
    print(f"{COLD_CASE:<16}{cold:>20.1f}   (hot path; a different layer's cache each call)")


if __name__ == "__main__":
    main()
