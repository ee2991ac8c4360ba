"""Where a decoded token's time goes in pyllm, next to llama.cpp in the same run.

    python bench/decode_profile.py                       # 1 and 2 threads, 3 repeats
    python bench/decode_profile.py --threads 2 --repeats 5 --no-op-by-op
    python bench/decode_profile.py --threads 2 --model ~/.cache/pyllm/bench/SmolLM2-135M-Instruct.Q4_K_M.gguf

For each thread count, repeated round-robin (the machine is noisy: both engines see the same
minutes): pyllm's engine decodes 128 tokens greedily (EOS ignored) after a short prompt, with the
fast C++ forward and, for comparison, the op-by-op forward; llama-cpp-python decodes the same
ids with its eval / greedy-sample loop; both prefill a 256-token prompt (pyllm with prefix
caching off, so it is computed). Prints medians and the pyllm / llama.cpp ratios, and the split
of one pyllm decode step:

    kernels        the C++ kernels (per kind, from the runner's own clock)
    runner glue    the rest of the C++ call (metadata checks, embedding rows, column copies)
    model Python   ModelRunner.forward around the C++ call (argument checks, the logits tensor)
    sampling       pyllm.generation.sample (the sampler chain and its kernel)
    engine Python  the rest of LLMEngine.step (scheduler, metadata, bookkeeping, detokenizing)

Run it on a quiet machine for absolute figures; under load compare the ratios. The load
average is printed with the results.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting the steps "
        "as his father had taught him, and watched the ships come home across the grey water. ")


class _Timed:
    """Wraps a callable, adding its wall time to `acc[label]`."""

    def __init__(self, acc: dict[str, float], label: str) -> None:
        self.acc, self.label = acc, label

    def wrap(self, f):
        acc, label = self.acc, self.label

        @functools.wraps(f)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.perf_counter() - t
        return timed


class _RunnerProxy:
    """Stands in for the C++ runner to time its forward call."""

    def __init__(self, runner, acc: dict[str, float]) -> None:
        self._runner, self._acc = runner, acc

    def forward_logits(self, *args):
        t = time.perf_counter()
        self._runner.forward_logits(*args)
        self._acc["runner"] = self._acc.get("runner", 0.0) + time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._runner, name)


class Pyllm:
    def __init__(self, model: str = "smollm2", int8: bool = False) -> None:
        import pyllm
        from pyllm.engine import llm_engine
        from pyllm.model.runtime import ModelRunner

        # --int8: llama.cpp's numerics (int8 activations, float16 KV-cache), as compare.py's pyllm-int8
        kw = dict(int8_activations=True, kv_dtype="float16") if int8 else {}
        self.llm = pyllm.load(model, progress=False, **kw)
        self.acc: dict[str, float] = {}
        # Instrument once: the model's forward, the sampler, the engine step.
        ModelRunner.forward = _Timed(self.acc, "forward").wrap(ModelRunner.forward)
        llm_engine.LLMEngine.step = _Timed(self.acc, "step").wrap(llm_engine.LLMEngine.step)
        import pyllm.generation as gen
        gen.sample = _Timed(self.acc, "sampling").wrap(gen.sample)
        self.llm_engine = llm_engine

    def engine(self, prefix_caching: bool = True):
        cfg = self.llm_engine.EngineConfig(kv_cache_tokens=2048,
                                           enable_prefix_caching=prefix_caching)
        return self.llm_engine.LLMEngine(self.llm.model, self.llm.tokenizer, cfg)

    def _params(self, n: int):
        from pyllm.sampling_params import SamplingParams

        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)

    def decode(self, ids: list[int], n_new: int, fast: bool) -> dict[str, float]:
        """Per decoded token: seconds of the whole step and of each part."""
        model = self.llm.model
        model.fast_path = fast
        eng = self.engine()
        eng.add_request("warm", ids, self._params(2))
        while eng.has_unfinished():
            eng.step()
        runner = None
        if fast and model._fast:
            runner = model._fast.runner
            if isinstance(runner, _RunnerProxy):
                runner = runner._runner
            model._fast.runner = _RunnerProxy(runner, self.acc)
            runner.set_profiling(True)
        eng.add_request("run", ids, self._params(n_new))
        eng.step()  # the prefill (the prompt is cached: only its last block is recomputed)
        if runner is not None:
            runner.reset_profile()
        self.acc.clear()
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        out = {k: v / steps for k, v in self.acc.items()}
        if runner is not None:
            prof = runner.profile()
            n = prof.pop("steps")
            out["kernels"] = {k: v / n for k, v in prof.items()}
            out["kernel_sum"] = sum(out["kernels"].values())
            out["glue"] = out["runner"] - out["kernel_sum"]
            out["model_python"] = out["forward"] - out["runner"]
            runner.set_profiling(False)
            model._fast.runner = runner
        out["engine_python"] = out["step"] - out["forward"] - out["sampling"]
        model.fast_path = True
        return out

    def prefill(self, ids: list[int]) -> float:
        eng = self.engine(prefix_caching=False)
        eng.add_request("p", ids, self._params(1))
        t = time.perf_counter()
        while eng.has_unfinished():
            eng.step()
        return time.perf_counter() - t


class LlamaCpp:
    def __init__(self, path: str, threads: int) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                                   n_ctx=2048, n_batch=512, verbose=False)
        self.greedy = llama_cpp.llama_sampler_init_greedy()

    def decode(self, ids: list[int], n_new: int) -> float:
        """Seconds per decoded token (after the prompt's first token)."""
        llm, lc = self.llm, self.lc
        llm.reset()
        llm.eval(ids)
        tok = lc.llama_sampler_sample(self.greedy, llm._ctx.ctx, -1)
        t = time.perf_counter()
        for _ in range(n_new - 1):
            llm.eval([tok])
            tok = lc.llama_sampler_sample(self.greedy, llm._ctx.ctx, -1)
        return (time.perf_counter() - t) / (n_new - 1)

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        self.lc.llama_sampler_sample(self.greedy, self.llm._ctx.ctx, -1)
        return time.perf_counter() - t


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="tokens to decode")
    ap.add_argument("--prompt", type=int, default=256, help="prefill prompt length")
    ap.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    ap.add_argument("--no-op-by-op", action="store_true", help="skip the op-by-op forward")
    ap.add_argument("--model", default="smollm2", help="a model name or GGUF path (default smollm2)")
    ap.add_argument("--int8", action="store_true",
                    help="pyllm with int8 activations and a float16 KV-cache (llama.cpp's numerics)")
    args = ap.parse_args()

    import torch

    from pyllm import _C

    py = Pyllm(args.model, args.int8)
    ids_long = py.llm.tokenizer.encode(TEXT * 12)
    ids_long = (ids_long * (args.prompt // max(len(ids_long), 1) + 1))[:args.prompt]
    ids_short = ids_long[:32]
    path = str(py.llm.loaded.path)
    print(f"model {path}\nload average before: {os.getloadavg()[0]:.2f}  "
          f"cpu isa {_C.cpu_isa()}  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")

    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        _C.set_num_threads(threads)
        lc = None
        if not args.no_llama:
            try:
                lc = LlamaCpp(path, threads)
            except Exception as exc:  # noqa: BLE001 - report and go on without it
                print(f"llama-cpp-python unavailable: {exc}")
        res: dict[str, list] = {"fast": [], "ops": [], "lc": [], "pf": [], "lcpf": []}
        for _ in range(args.repeats):
            res["fast"].append(py.decode(ids_short, args.tokens, fast=True))
            if lc:
                res["lc"].append(lc.decode(ids_short, args.tokens))
            if not args.no_op_by_op:
                res["ops"].append(py.decode(ids_short, args.tokens, fast=False))
            res["pf"].append(py.prefill(ids_long))
            if lc:
                res["lcpf"].append(lc.prefill(ids_long))

        def part(runs: list[dict], key: str) -> float:
            return _med([r.get(key, 0.0) for r in runs])

        print(f"\n== {threads} thread(s), {args.repeats} repeats, medians; "
              f"load average now {os.getloadavg()[0]:.2f}")
        fast_step = part(res["fast"], "step")
        rows = [("pyllm (fast C++ forward)", fast_step)]
        if res["ops"]:
            rows.append(("pyllm (op-by-op forward)", part(res["ops"], "step")))
        if res["lc"]:
            rows.append(("llama.cpp", _med(res["lc"])))
        print(f"decode {args.tokens} tokens, batch 1:")
        for name, sec in rows:
            print(f"  {name:26s} {1 / sec:7.1f} tokens/s  ({sec * 1e3:6.2f} ms/token)")
        if res["lc"]:
            print(f"  ratio pyllm fast / llama.cpp: {_med(res['lc']) / fast_step:.2f}x")
        pf = _med(res["pf"])
        print(f"prefill {args.prompt}-token prompt (to the first token):")
        print(f"  {'pyllm':26s} {args.prompt / pf:7.1f} tokens/s  ({pf * 1e3:7.1f} ms)")
        if res["lcpf"]:
            lpf = _med(res["lcpf"])
            print(f"  {'llama.cpp':26s} {args.prompt / lpf:7.1f} tokens/s  ({lpf * 1e3:7.1f} ms)")
            print(f"  ratio pyllm / llama.cpp: {lpf / pf:.2f}x")

        for label, runs in (("fast C++ forward", res["fast"]), ("op-by-op forward", res["ops"])):
            if not runs:
                continue
            step = part(runs, "step")
            print(f"split of one decode step, {label} ({step * 1e3:.2f} ms; each part the median "
                  "of its per-run means):")

            def line(name: str, sec: float, indent: int = 2) -> None:
                print(f"{' ' * indent}{name:{20 - indent}s} {sec * 1e3:7.3f} ms  "
                      f"{100 * sec / step:5.1f} %")

            if "kernels" in runs[0]:
                line("kernels", part(runs, "kernel_sum"))
                kernels = {k: _med([r["kernels"][k] for r in runs]) for k in runs[0]["kernels"]}
                for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]):
                    if v > 0:
                        line(k, v, indent=4)
                line("runner glue", part(runs, "glue"))
                line("model Python", part(runs, "model_python"))
            else:
                line("model forward", part(runs, "forward"))
                if res["fast"] and "kernel_sum" in res["fast"][0]:  # the same kernels, same work
                    k = part(res["fast"], "kernel_sum")
                    line("~kernels", k, indent=4)
                    line("~Python", part(runs, "forward") - k, indent=4)
                    print("    (~: the fast path's kernel time from the same run; the rest is the "
                          "Python around the op-by-op kernels)")
            line("sampling", part(runs, "sampling"))
            line("engine Python", part(runs, "engine_python"))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
