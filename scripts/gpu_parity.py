"""GPU checks on a SmolLM2-shaped model (run by scripts/gpu_check.sh on a machine with a GPU).

1. The model's logits on CUDA against the CPU path (same GGUF, same tokens): a 100-token
   prefill and 16 decode steps, relative error ||gpu - cpu|| / ||cpu|| and argmax agreement.
   The same for a 64-sequence decode step over random K/V, on each CUDA kernel family.
2. Seeded sampling: the Sampler on the same logits on CPU and on CUDA, 16 rows with different
   seeded SamplingParams over 24 steps: the tokens must be identical.
3. End to end on CUDA: pyllm.load(...).generate with the real tokenizer and chat template, CUDA
   graphs on (the default) vs off: identical greedy tokens; seeded sampling CPU vs GPU.

    python scripts/gpu_parity.py MODEL_DIR/model.gguf
Prints one line per check and exits 1 if a check fails.
"""

from __future__ import annotations

import sys
import time

import torch

from pyllm.model.batch import ContiguousKVCache
from pyllm.model.loader import load_model
from pyllm.sampler import Sampler
from pyllm.sampling_params import SamplingParams

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def logits_cpu_vs_cuda(path: str) -> torch.Tensor:
    cpu, gpu = load_model(path, "cpu").model, load_model(path, "cuda").model
    cfg = cpu.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (100,), generator=g)
    caches = {
        d: ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, 128, device=d)
        for d in ("cpu", "cuda")
    }
    with torch.inference_mode():
        a = cpu(ids, caches["cpu"].metadata([0], [0], [100]), caches["cpu"].kv_caches)
        b = gpu(ids.cuda(), caches["cuda"].metadata([0], [0], [100]), caches["cuda"].kv_caches)
        r = rel(b, a)
        agree = float((a.argmax(-1) == b.cpu().argmax(-1)).float().mean())
        report(
            "prefill logits cuda vs cpu",
            r < 1e-4 and agree > 0.97,
            f"rel err {r:.2e}, max abs {float((b.cpu() - a).abs().max()):.2e}, "
            f"argmax agreement {agree:.1%} over 100 rows (logit std {float(a.std()):.2f})",
        )
        worst, same = 0.0, 0
        tok = int(a[-1].argmax())
        for step in range(16):
            n = 100 + step
            la = cpu(
                torch.tensor([tok]), caches["cpu"].metadata([0], [n], [1]), caches["cpu"].kv_caches
            )
            lb = gpu(
                torch.tensor([tok], device="cuda"),
                caches["cuda"].metadata([0], [n], [1]),
                caches["cuda"].kv_caches,
            )
            worst = max(worst, rel(lb, la))
            same += int(la.argmax()) == int(lb.argmax())
            tok = int(la.argmax())
        report(
            "decode logits cuda vs cpu",
            worst < 1e-4 and same >= 15,
            f"worst rel err {worst:.2e} over 16 steps, same argmax {same}/16",
        )
    return a[-16:].clone()


def batch_decode_by_family(path: str) -> None:
    """A 64-sequence decode step over random K/V (mixed context lengths, SmolLM2's shapes) on the
    CPU and on CUDA with each kernel family: the tuned split-K qlinear tile (64 tokens) and the
    warp-split attention against the CPU, as the general kernels are."""
    from pyllm import ops

    cpu, gpu = load_model(path, "cpu").model, load_model(path, "cuda").model
    cfg = cpu.config
    g = torch.Generator().manual_seed(3)
    batch, longest = 64, 700
    lengths = torch.randint(1, longest, (batch,), generator=g).tolist()
    cache_cpu = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, batch, longest + 1)
    for k, v in cache_cpu.kv_caches:
        k.normal_(generator=g)
        v.normal_(generator=g)
    cache_gpu = ContiguousKVCache(
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim, batch, longest + 1, device="cuda"
    )
    for (kc, vc), (kg, vg) in zip(cache_cpu.kv_caches, cache_gpu.kv_caches):
        kg.copy_(kc)
        vg.copy_(vc)
    ids = torch.randint(0, cfg.vocab_size, (batch,), generator=g)
    with torch.inference_mode():
        want = cpu(
            ids, cache_cpu.metadata(list(range(batch)), lengths, [1] * batch), cache_cpu.kv_caches
        )
        for family in ("general", "tuned"):
            with ops.using_cuda_kernels(family):
                got = gpu(
                    ids.cuda(),
                    cache_gpu.metadata(list(range(batch)), lengths, [1] * batch),
                    cache_gpu.kv_caches,
                )
            r = rel(got, want)
            agree = float((want.argmax(-1) == got.cpu().argmax(-1)).float().mean())
            report(
                f"batch-64 decode logits cuda ({family} kernels) vs cpu",
                r < 1e-4 and agree > 0.97,
                f"rel err {r:.2e}, argmax agreement {agree:.1%} over {batch} rows",
            )


def seeded_sampling(logits: torch.Tensor) -> None:
    """The same logits on both devices through the Sampler: identical tokens."""
    B, V = 16, logits.shape[-1]
    g = torch.Generator().manual_seed(1)
    rows = logits[:B].float()
    kinds = [
        dict(temperature=0.8),
        dict(temperature=1.0, top_k=40),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.0, min_p=0.05),
        dict(temperature=0.9, typical_p=0.95),
        dict(temperature=1.2, top_k=100, top_p=0.95, min_p=0.01),
        dict(temperature=0.8, repetition_penalty=1.3),
        dict(temperature=0.8, frequency_penalty=0.5, presence_penalty=0.3),
        dict(temperature=1.0, logit_bias={5: 5.0, 17: -100.0}),
        dict(temperature=0.0),
    ]
    params = [SamplingParams(seed=1000 + i, **kinds[i % len(kinds)]) for i in range(B)]
    prompts = [torch.randint(0, V, (20,), generator=g).tolist() for _ in range(B)]
    outs_cpu = [[] for _ in range(B)]
    outs_gpu = [[] for _ in range(B)]
    states_cpu = [{} for _ in range(B)]
    states_gpu = [{} for _ in range(B)]
    sampler = Sampler()
    same = total = 0
    for _step in range(24):
        x = rows + torch.randn(rows.shape, generator=g)  # fresh logits each step, same on both
        rc = sampler.sample(x.clone(), params, prompts, outs_cpu, states_cpu)
        rg = sampler.sample(x.cuda(), params, prompts, outs_gpu, states_gpu)
        tc, tg = rc.token_ids.tolist(), rg.token_ids.cpu().tolist()
        same += sum(a == b for a, b in zip(tc, tg))
        total += B
        for i in range(B):
            outs_cpu[i].append(tc[i])
            outs_gpu[i].append(tg[i])
    report(
        "seeded sampling cuda vs cpu (same logits)",
        same == total,
        f"{same}/{total} tokens identical ({len(kinds)} parameter mixes, 24 steps)",
    )


def end_to_end(path: str) -> None:
    import pyllm
    from pyllm.engine.llm_engine import EngineConfig

    llm = pyllm.load(path, device="cuda")
    prompts = [
        "Hello, how are you?",
        "Write a haiku about GPUs.",
        "1, 2, 3,",
        "The capital of",
        "def main():",
    ]
    greedy = SamplingParams.greedy(max_tokens=32, ignore_eos=True)
    t = time.perf_counter()
    with_graphs = [r.token_ids for r in _gen(llm, prompts, greedy, EngineConfig())]
    t = time.perf_counter() - t
    without = [r.token_ids for r in _gen(llm, prompts, greedy, EngineConfig(cuda_graphs=False))]
    report(
        "engine greedy: graphs vs eager",
        with_graphs == without,
        f"{sum(map(len, with_graphs))} tokens, {len(prompts)} prompts ({t:.2f} s with graphs)",
    )
    cpu = pyllm.load(path, device="cpu")
    seeded = SamplingParams(temperature=0.8, top_p=0.95, seed=7, max_tokens=16, ignore_eos=True)
    a = [r.token_ids for r in _gen(llm, prompts, seeded, EngineConfig())]
    b = [r.token_ids for r in _gen(cpu, prompts, seeded, EngineConfig())]
    prefix = [
        next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), len(p)) for p, q in zip(a, b)
    ]
    # Logits differ in the last bits between devices, so a seeded draw may flip where two tokens
    # are nearly tied; report how long the sequences agree (the sampler check above is exact).
    print(
        f"INFO seeded generation cuda vs cpu: identical for the first {prefix} of 16 tokens",
        flush=True,
    )


def _gen(llm, prompts, params, config):
    llm._engine = None
    llm._engine_config = config
    try:
        return [out for res in llm.generate(prompts, params) for out in res.outputs]
    finally:
        llm._engine = None


def main() -> None:
    path = sys.argv[1]
    logits = logits_cpu_vs_cuda(path)
    batch_decode_by_family(path)
    seeded_sampling(logits)
    end_to_end(path)
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all GPU parity checks passed", flush=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
