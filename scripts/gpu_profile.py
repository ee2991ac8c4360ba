"""Where a decode step's GPU time goes: per-kernel device time of the model's forward on CUDA.

    python scripts/gpu_profile.py MODEL.gguf [--batch 1,64] [--context 256] \
        [--kernels general,tuned]

For each batch size: a decode step over a ContiguousKVCache (random K/V, `--context` cached
tokens a sequence) is run eagerly under torch.profiler (the same kernels a graph replays), and the
kernels are listed by total device time with their count and mean, plus the step's total.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from pyllm import ops
from pyllm.model.batch import ContiguousKVCache
from pyllm.model.loader import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--kernels", default="general,tuned", help="CUDA kernel families, comma-separated"
    )
    args = ap.parse_args()
    model = load_model(args.model, "cuda").model
    for family in args.kernels.split(","):
        with ops.using_cuda_kernels(family):
            profile_steps(model, args, family)


def profile_steps(model, args, family: str) -> None:
    cfg = model.config
    for batch in map(int, args.batch.split(",")):
        cache = ContiguousKVCache(
            cfg.n_layer, cfg.n_kv_head, cfg.head_dim, batch, args.context + 1, device="cuda"
        )
        for k, v in cache.kv_caches:
            k.normal_()
            v.normal_()
        meta = cache.metadata(list(range(batch)), [args.context] * batch, [1] * batch)
        ids = torch.randint(0, cfg.vocab_size, (batch,), device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                model(ids, meta, cache.kv_caches, validated=True)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    model(ids, meta, cache.kv_caches, validated=True)
                torch.cuda.synchronize()
        rows = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                name = e.name.replace("(anonymous namespace)::", "").removeprefix("void ")
                name = name.split("(")[0][:90]  # drop the argument list, keep template args
                total, count = rows.get(name, (0.0, 0))
                rows[name] = (total + e.device_time_total, count + 1)  # µs
        step = sum(t for t, _ in rows.values()) / args.steps
        print(
            f"\n== {family} kernels, batch {batch}, context {args.context}: "
            f"{step / 1e3:.3f} ms of kernels a step, "
            f"{sum(c for _, c in rows.values()) // args.steps} kernels a step"
        )
        for name, (total, count) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:14]:
            print(
                f"  {total / args.steps:9.1f} us/step  {count // args.steps:5d} x "
                f"{total / count:8.2f} us  {name}"
            )
        del cache
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
