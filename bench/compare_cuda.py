"""pyllm against transformers on one CUDA GPU, same random SmolLM2-shaped weights, one run.

    python scripts/make_random_llama.py DIR --hf --metadata smollm2_metadata.json.gz
    python bench/compare_cuda.py --model-dir DIR [--repeats 3] [--compile] [--json OUT.json]

DIR/model.gguf is what pyllm runs (Q4_1 matrices, Q8_0 tied embedding: the default model's
layout and size); DIR/hf holds the same values dequantized, in bfloat16, for transformers
(scripts/make_random_llama.py writes both). The real model cannot travel to a GPU machine here,
and speed does not depend on the weights' values.

Measured (medians over --repeats, after an untimed warm-up run of the same shape):
- the device's ceilings: a 1 GiB device-to-device copy (bytes read + written per second);
- decode tokens/s at batch 1 and batch 64 (random distinct prompts of --prompt tokens, then
  --new greedy tokens, EOS ignored): pyllm through its engine (scheduler, sampler and
  detokenizer included) with CUDA graphs and without; transformers `generate` in bfloat16
  (eager; and with a static cache + torch.compile when --compile), its decode rate taken as
  (tokens(N) - tokens(1)) / (time(N) - time(1)) so its prefill is left out;
- prefill tokens/s: one 512-token prompt, and 8 x 256 tokens in one step;
- pyllm's forward alone (the captured graph's replay, timed with CUDA events) at batch 1 and 64
  with bytes moved per step (every weight byte once + the K/V rows read) over that time, against
  the copy bandwidth: the issue's "batch-64 decode moves >= 50 % of the memory bandwidth".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def sync():
    torch.cuda.synchronize()


# ------------------------------------------------------------------ the device


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read and written."""
    n = 1 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        sync()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / median(times) / 1e9


# ------------------------------------------------------------------ pyllm


def weight_bytes(model) -> int:
    """Bytes of every weight a decode step reads once (tied tables counted once)."""
    from pyllm.ops.qlinear import QWeight

    seen, total = set(), 0
    for m in model.modules():
        tensors = [getattr(m, "weight", None), getattr(m, "bias", None)]
        for t in tensors:
            t = t.data if isinstance(t, QWeight) else t
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def kv_bytes_per_token(cfg, dtype: torch.dtype) -> int:
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()


def _prompts(rng: torch.Generator, n: int, length: int, vocab: int) -> list[list[int]]:
    return [torch.randint(3, vocab, (length,), generator=rng).tolist() for _ in range(n)]


def pyllm_decode(llm, batch: int, prompt: int, new: int, repeats: int, graphs: bool,
                 kv_dtype=torch.float32) -> dict:
    from pyllm.engine.llm_engine import EngineConfig, LLMEngine
    from pyllm.sampling_params import SamplingParams

    cfg = llm.config
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(
        max_num_seqs=max(batch, 1), max_num_batched_tokens=4096, cuda_graphs=graphs,
        kv_cache_tokens=batch * (prompt + new + 32), kv_dtype=kv_dtype, enable_prefix_caching=False))
    params = SamplingParams.greedy(max_tokens=new, ignore_eos=True)
    rng = torch.Generator().manual_seed(batch * 7 + prompt)
    rates, step_ms = [], []
    for rep in range(repeats + 1):  # the first run is the warm-up (graph captures)
        for i, p in enumerate(_prompts(rng, batch, prompt, cfg.vocab_size)):
            engine.add_request((rep, i), p, params)
        seqs = lambda: [s for group in engine._requests.values() for s in group]  # noqa: E731
        while engine.has_unfinished() and any(not s.out for s in seqs()):
            engine.step()  # prefill (and the first token of each sequence)
        sync()
        t, steps = time.perf_counter(), 0
        while engine.has_unfinished():
            engine.step()
            steps += 1
        sync()
        dt = time.perf_counter() - t
        if rep:
            rates.append(batch * steps / dt)
            step_ms.append(dt / steps * 1e3)
    out = {"tokens_per_s": median(rates), "step_ms": median(step_ms), "runs": rates}
    if graphs:
        out["runner"] = dict(engine.forward.stats)
    return out


def pyllm_prefill(llm, batch: int, length: int, repeats: int) -> dict:
    from pyllm.engine.llm_engine import EngineConfig, LLMEngine
    from pyllm.sampling_params import SamplingParams

    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(
        max_num_seqs=batch, max_num_batched_tokens=batch * length, kv_cache_tokens=batch * (length + 32),
        enable_prefix_caching=False))
    params = SamplingParams.greedy(max_tokens=1, ignore_eos=True)
    rng = torch.Generator().manual_seed(length + batch)
    rates = []
    for rep in range(repeats + 1):
        for i, p in enumerate(_prompts(rng, batch, length, llm.config.vocab_size)):
            engine.add_request((rep, i), p, params)
        sync()
        t = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        sync()
        if rep:
            rates.append(batch * length / (time.perf_counter() - t))
    return {"tokens_per_s": median(rates), "runs": rates}


def pyllm_forward(llm, batch: int, context: int, kv_dtype=torch.float32) -> dict:
    """The decode graph's replay alone: ms per step and GB/s of weights + K/V read."""
    from pyllm.model.batch import ContiguousKVCache
    from pyllm.model.cuda_graph import CudaGraphRunner

    model, cfg = llm.model, llm.config
    cache = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, batch, context + 1,
                              dtype=kv_dtype, device="cuda")
    for k, v in cache.kv_caches:
        k.normal_(0, 1)
        v.normal_(0, 1)
    meta = cache.metadata(list(range(batch)), [context] * batch, [1] * batch)
    ids = torch.randint(0, cfg.vocab_size, (batch,), device="cuda")
    runner = CudaGraphRunner(model, max_batch=batch)
    for _ in range(3):
        runner(ids, meta, cache.kv_caches)
    bucket = next(iter(runner._buckets.values()))
    times = []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        bucket.graph.replay()
        b.record()
        sync()
        times.append(a.elapsed_time(b) / 1e3)
    sync()
    t = time.perf_counter()
    for _ in range(20):
        runner(ids, meta, cache.kv_caches)  # checks, copies, replay, logits copy
    sync()
    call = (time.perf_counter() - t) / 20
    wb = weight_bytes(model.gpt)
    kvb = batch * (context + 1) * kv_bytes_per_token(cfg, kv_dtype)
    step = median(times)
    del cache
    torch.cuda.empty_cache()
    return {"replay_ms": step * 1e3, "runner_call_ms": call * 1e3, "weight_bytes": wb,
            "kv_bytes": kvb, "GB_per_s": (wb + kvb) / step / 1e9}


# (batch, cached context, KV dtype) of the graph-replay rows: the bytes a batch-64 step moves grow
# with the context, so the bandwidth share is reported at several.
FORWARD_SHAPES = ((1, 256, torch.float32), (64, 256, torch.float32), (64, 1024, torch.float32),
                  (64, 1024, torch.bfloat16), (64, 4096, torch.bfloat16))


def family_tag(family: str) -> str:
    """The suffix of a CUDA kernel family's result keys: none for the general kernels (the keys
    earlier runs wrote), " [tuned]" for the tuned ones."""
    return "" if family == "general" else f" [{family}]"


def forward_key(batch: int, ctx: int, dtype: torch.dtype, tag: str) -> str:
    return f"pyllm forward b{batch} ctx{ctx} {str(dtype).removeprefix('torch.')} KV{tag}"


# ------------------------------------------------------------------ transformers


def hf_model(folder: Path, compiled: str = ""):
    """transformers in bfloat16. compiled: "" (eager, dynamic cache); "auto" (static cache:
    generate compiles its decoding forward itself); "manual" (static cache + our own
    torch.compile of forward, without CUDA graphs: with mode="reduce-overhead" transformers'
    generate reads a graph output after the next replay overwrote it, an error here)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    if compiled:
        model.generation_config.cache_implementation = "static"
    if compiled == "manual":
        model.generation_config.disable_compile = True
        model.forward = torch.compile(model.forward, fullgraph=True)
    return model


def hf_decode(model, batch: int, prompt: int, new: int, repeats: int, vocab: int) -> dict:
    rng = torch.Generator().manual_seed(batch * 7 + prompt)

    def run(n: int) -> float:
        ids = torch.randint(3, vocab, (batch, prompt), generator=rng).cuda()
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync()
        assert out.shape[1] == prompt + n
        return time.perf_counter() - t

    run(new)
    run(1)  # warm-up (and compilation) for both lengths
    rates = []
    for _ in range(repeats):
        long, short = run(new), run(1)
        rates.append(batch * (new - 1) / (long - short))
    return {"tokens_per_s": median(rates), "runs": rates}


def hf_prefill(model, batch: int, length: int, repeats: int, vocab: int) -> dict:
    rng = torch.Generator().manual_seed(length)
    rates = []
    for rep in range(repeats + 1):
        ids = torch.randint(3, vocab, (batch, length), generator=rng).cuda()
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            model(ids, use_cache=False, logits_to_keep=1)
        sync()
        if rep:
            rates.append(batch * length / (time.perf_counter() - t))
    return {"tokens_per_s": median(rates), "runs": rates}


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens before decoding")
    ap.add_argument("--new", type=int, default=112, help="tokens decoded a sequence")
    ap.add_argument("--compile", action="store_true", help="also transformers static cache + torch.compile")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--kernels", default="general,tuned",
                    help="CUDA kernel families to measure, comma-separated (pyllm.ops.set_cuda_kernels)")
    args = ap.parse_args()

    import pyllm

    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "args": {k: str(v) for k, v in vars(args).items()}}
    out = lambda: args.json and args.json.write_text(json.dumps(res, indent=1))  # noqa: E731
    t0 = time.perf_counter()
    res["copy_GB_per_s"] = bw = copy_bandwidth()
    print(f"device: {res['device']}; device-to-device copy {bw:.0f} GB/s (read + write)", flush=True)

    llm = pyllm.load(args.model_dir / "model.gguf", device="cuda")
    P, N, R = args.prompt, args.new, args.repeats
    rows = []

    def row(name, value, unit="tok/s"):
        rows.append((name, value, unit))
        print(f"{name:<58} {value:>12.1f} {unit}", flush=True)

    from pyllm import ops

    families = args.kernels.split(",")
    for fam in families:
        tag = family_tag(fam)
        with ops.using_cuda_kernels(fam):
            for b in (1, 64):
                for graphs in ((True, False) if fam == families[0] else (True,)):
                    key = f"pyllm decode b{b} {'graphs' if graphs else 'eager'}{tag}"
                    res[key] = r = pyllm_decode(llm, b, P, N, R, graphs)
                    row(key + f" ({r['step_ms']:.2f} ms/step)", r["tokens_per_s"])
                    out()
            key = f"pyllm decode b64 graphs bf16-kv{tag}"
            res[key] = r = pyllm_decode(llm, 64, P, N, R, True, torch.bfloat16)
            row(f"pyllm decode b64 graphs, bf16 KV{tag} ({r['step_ms']:.2f} ms/step)", r["tokens_per_s"])
            for b, length in ((1, 512), (8, 256)):
                key = f"pyllm prefill {b}x{length}{tag}"
                res[key] = r = pyllm_prefill(llm, b, length, R)
                row(key, r["tokens_per_s"])
            for b, ctx, dt in FORWARD_SHAPES:
                key = forward_key(b, ctx, dt, tag)
                res[key] = r = pyllm_forward(llm, b, ctx, dt)
                print(f"{key:<48} replay {r['replay_ms']:.3f} ms (runner call {r['runner_call_ms']:.3f} ms), "
                      f"{(r['weight_bytes'] + r['kv_bytes']) / 1e6:.1f} MB -> {r['GB_per_s']:.0f} GB/s "
                      f"= {r['GB_per_s'] / bw:.0%} of the copy bandwidth", flush=True)
                out()
    del llm
    torch.cuda.empty_cache()

    vocab = 49152
    hf = hf_model(args.model_dir / "hf")
    for b in (1, 64):
        key = f"transformers decode b{b} eager"
        res[key] = r = hf_decode(hf, b, P, N, R, vocab)
        row(key, r["tokens_per_s"])
        out()
    for b, length in ((1, 512), (8, 256)):
        key = f"transformers prefill {b}x{length}"
        res[key] = r = hf_prefill(hf, b, length, R, vocab)
        row(key, r["tokens_per_s"])
    del hf
    torch.cuda.empty_cache()
    for mode in (("auto", "manual") if args.compile else ()):
        try:
            t = time.perf_counter()
            hf = hf_model(args.model_dir / "hf", compiled=mode)
            for b in (1, 64):
                key = f"transformers decode b{b} static+compile"
                res[key] = r = hf_decode(hf, b, P, N, R, vocab)
                r["compile_mode"] = mode
                r["compiled_by_generate"] = hasattr(hf, "_compiled_call")
                row(f"{key} ({mode}{', compiled' if mode == 'manual' or r['compiled_by_generate'] else ''})",
                    r["tokens_per_s"])
                out()
            res["compile_s"] = time.perf_counter() - t
            break
        except Exception as exc:  # report and go on: the eager figures stand
            res[f"compile_error_{mode}"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"transformers static+compile ({mode}) failed:", res[f"compile_error_{mode}"], flush=True)
        finally:
            hf = None
            torch.cuda.empty_cache()

    print("\nratios (pyllm graphs / transformers):", flush=True)
    for fam in families:
        tag = family_tag(fam)
        for b in (1, 64):
            ours = res[f"pyllm decode b{b} graphs{tag}"]["tokens_per_s"]
            for kind in ("eager", "static+compile"):
                theirs = res.get(f"transformers decode b{b} {kind}")
                if theirs:
                    ratio = ours / theirs["tokens_per_s"]
                    res[f"ratio decode b{b} vs {kind}{tag}"] = ratio
                    print(f"  {fam} kernels, decode batch {b} vs transformers {kind}: {ratio:.1f}x", flush=True)
        for b, length in ((1, 512), (8, 256)):
            ratio = res[f"pyllm prefill {b}x{length}{tag}"]["tokens_per_s"] / \
                res[f"transformers prefill {b}x{length}"]["tokens_per_s"]
            res[f"ratio prefill {b}x{length}{tag}"] = ratio
            print(f"  {fam} kernels, prefill {b}x{length}: {ratio:.2f}x", flush=True)
    for fam in families:
        tag = family_tag(fam)
        ratio = res.get(f"ratio decode b1 vs eager{tag}", float("nan"))
        shares = ", ".join(f"ctx {ctx} {str(dt).removeprefix('torch.')} KV "
                           f"{res[forward_key(b, ctx, dt, tag)]['GB_per_s'] / bw:.0%}"
                           for b, ctx, dt in FORWARD_SHAPES if b == 64)
        print(f"targets, {fam} kernels: decode b1 {ratio:.1f}x transformers eager "
              f"({'met' if ratio >= 10 else 'missed'} >= 10x); b64 forward share of the copy bandwidth "
              f"(>= 50% wanted): {shares}", flush=True)
    res["wall_s"] = time.perf_counter() - t0
    out()


if __name__ == "__main__":
    main()
