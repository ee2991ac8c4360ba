"""pyllm against its peers (llama.cpp, transformers, optionally compiled PyTorch), side by side.

    python bench/compare.py                          # issue-4 set: load, decode1, prefill, ctx
    python bench/compare.py --tasks batch,scale,growth   # issue-7 set (add --full for 256 x 128)
    python bench/compare.py --tasks all --repeats 5 --json /tmp/bench.json
    python bench/compare.py --engines pyllm,llama.cpp --tasks decode1 --repeats 1

Every engine x measurement runs in a fresh subprocess (`--worker ENGINE --task TASK ...`, which
prints one JSON line), so load time and peak RSS are the process's own. The orchestrator runs the
workers interleaved (A B C, A B C, ... with the order rotated each repeat) because the machine is
noisy, then prints the median per engine, the ratios pyllm/llama.cpp and pyllm/transformers, and
the issues' targets marked met or missed. A worker that fails or times out gives an error cell;
the others go on.

Same model for everyone: the default SmolLM2-135M-Instruct Q4_1 GGUF (pyllm's own pull), or the
GGUF named by `--model` (such as the Q4_K_M and Q6_K files bench/make_kquant_models.py makes).
pyllm and llama.cpp run the GGUF; transformers runs it dequantized to float32 (loaded from the GGUF
for the `load` task, and from a float32 safetensors copy made once per GGUF file, named after the
file and its size, under $PYLLM_HOME/bench for the other tasks, because its GGUF load takes ~20 s
a process). PYLLM_NATIVE_KQUANTS=0 in the environment reaches the pyllm workers (K-quant and
Q5_0/Q5_1 blocks converted to Q8_0 at load rather than kept native); the header says which.
Every engine sees the same token ids
(tokenized once by llama.cpp), decodes greedily and never stops early (ignore EOS), on `--threads`
threads (default 2). Two pyllm columns: `pyllm` is the default, exact configuration (float32
activations and KV-cache: the reference model's logits); `pyllm-int8` runs llama.cpp's numerics
(int8 activations per 32-value block, float16 KV-cache: `pyllm.load(..., int8_activations=True,
kv_dtype="float16")`, `--int8 --kv-dtype float16` on the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENGINES = ("pyllm", "pyllm-int8", "llama.cpp", "transformers", "torch")
DEFAULT_ENGINES = ("pyllm", "pyllm-int8", "llama.cpp", "transformers")
ISSUE4_TASKS = ("load", "decode1", "prefill", "ctx")
ISSUE7_TASKS = ("batch", "scale", "growth")
ALL_TASKS = ISSUE4_TASKS + ISSUE7_TASKS
CTX_LENGTHS = (128, 1024, 4096)
SCALE_SIZES = (1, 4, 16, 64)
GROWTH_PROMPTS = (32, 128, 512, 2048)   # prompt lengths, 16 new tokens each
GROWTH_GENERATED = (16, 64, 256)        # new tokens after a 32-token prompt
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PAD_ID = 2  # the model's pad (= eos) id, for transformers' left padding

# ====================================================================== worker side


def _mib_peak() -> float:
    """Peak resident set of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _round_ctx(tokens: int) -> int:
    """Context / KV-cache size for `tokens` tokens: rounded up to 256, the same for every engine."""
    return -(-(tokens + 16) // 256) * 256


class PyllmRunner:
    """pyllm.load + the engine (LLMEngine; EngineFrontend.run_all for batches)."""

    def __init__(self, threads: int) -> None:
        import torch

        import pyllm
        from pyllm import _C
        from pyllm.engine.frontend import EngineFrontend
        from pyllm.engine.llm_engine import LLMEngine
        from pyllm.sampling_params import SamplingParams

        torch.set_num_threads(threads)
        _C.set_num_threads(threads)
        self.pyllm, self.LLMEngine = pyllm, LLMEngine
        self.EngineFrontend, self.SamplingParams = EngineFrontend, SamplingParams

    int8 = False  # PyllmInt8Runner: the opt-in int8-activation matmuls
    kv_dtype = "float32"

    def load(self, model_path: str, n_ctx: int | None) -> None:
        self.n_ctx = n_ctx
        self.llm = self.pyllm.load(model_path, progress=False, int8_activations=self.int8,
                                   kv_dtype=self.kv_dtype)
        self.engine = self._new_engine()

    def _new_engine(self):
        # The KV-cache sized like llama.cpp's n_ctx for single sequences; the default otherwise.
        cfg = self.llm.engine_config(**({"kv_cache_tokens": self.n_ctx} if self.n_ctx else {}))
        return self.LLMEngine(self.llm.model, self.llm.tokenizer, cfg)

    def _params(self, n_new: int):
        return self.SamplingParams(max_tokens=n_new, temperature=0.0, ignore_eos=True)

    def single(self, ids: list[int], n_new: int) -> tuple[float, float, int]:
        """(prefill seconds: to the first token, decode seconds: the other tokens, tokens)."""
        eng = self.engine
        g0 = eng.stats["generated_tokens"]
        rid = ("bench", time.perf_counter_ns())
        t0 = time.perf_counter()
        eng.add_request(rid, list(ids), self._params(n_new))
        t_first = None
        while eng.has_unfinished():
            eng.step()
            if t_first is None and eng.stats["generated_tokens"] > g0:
                t_first = time.perf_counter()
        t_end = time.perf_counter()
        return t_first - t0, t_end - t_first, eng.stats["generated_tokens"] - g0

    def batch(self, prompts: list[list[int]], n_new: int, mode: str) -> int:
        front = self.EngineFrontend(self.engine)
        out = front.run_all([list(p) for p in prompts], [self._params(n_new)] * len(prompts))
        return sum(len(c.token_ids) for comps in out for c in comps)

    def fresh(self) -> None:
        """A new engine (empty cache, no cached prefixes) on the same loaded model."""
        del self.engine
        self.engine = self._new_engine()


class LlamaCppRunner:
    """llama-cpp-python: Llama.eval for prefill, an eval/greedy-sample loop for decode; for
    batches either one prompt after another or the low-level llama_batch API (16 sequences)."""

    def __init__(self, threads: int) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.threads = threads

    def load(self, model_path: str, n_ctx: int | None) -> None:
        lc = self.lc
        self.model_path = model_path
        self.llm = lc.Llama(model_path=model_path, n_ctx=n_ctx or 512, n_threads=self.threads,
                            n_threads_batch=self.threads, n_batch=512, verbose=False)
        self.greedy = lc.llama_sampler_init_greedy()

    def _sample(self, ctx, idx: int = -1) -> int:
        return self.lc.llama_sampler_sample(self.greedy, ctx, idx)

    def single(self, ids: list[int], n_new: int) -> tuple[float, float, int]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = self._sample(llm._ctx.ctx)
        t1 = time.perf_counter()
        for _ in range(n_new - 1):  # EOS is never checked: ignore_eos
            llm.eval([tok])
            tok = self._sample(llm._ctx.ctx)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, n_new

    def batch(self, prompts: list[list[int]], n_new: int, mode: str) -> int:
        if mode == "batched":
            return self._batched(prompts, n_new, wave=16)
        total = 0
        for p in prompts:
            total += self.single(p, n_new)[2]
        return total

    def _batched(self, prompts: list[list[int]], n_new: int, wave: int) -> int:
        """Waves of `wave` sequences through one llama_batch per step (prefill packed into
        n_batch-token batches, then one token per sequence per decode call)."""
        lc = self.lc
        n_batch = 512
        longest = max(len(p) for p in prompts) + n_new
        params = lc.llama_context_default_params()
        params.n_ctx = _round_ctx(wave * longest)
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = wave
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True
        params.no_perf = True
        ctx = lc.llama_init_from_model(self.llm._model.model, params)
        if ctx is None:
            raise RuntimeError("llama_init_from_model failed for the batched context")
        batch = lc.llama_batch_init(n_batch, 0, 1)
        mem = lc.llama_get_memory(ctx)
        total = 0

        def decode(entries: list[tuple[int, int, int, bool]]) -> None:
            for i, (tok, pos, seq, want) in enumerate(entries):
                batch.token[i], batch.pos[i] = tok, pos
                batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, seq, want
            batch.n_tokens = len(entries)
            rc = lc.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

        try:
            for start in range(0, len(prompts), wave):
                group = prompts[start:start + wave]
                lc.llama_memory_clear(mem, True)
                last: list[int] = [0] * len(group)
                entries: list[tuple[int, int, int, bool]] = []
                owners: list[int] = []  # which sequence's logits each batch row holds
                flat = [(s, j, t) for s, p in enumerate(group) for j, t in enumerate(p)]
                for s, j, t in flat:  # prefill, packed
                    want = j == len(group[s]) - 1
                    entries.append((t, j, s, want))
                    if want:
                        owners.append(len(entries) - 1)
                    if len(entries) == n_batch:
                        decode(entries)
                        for row in owners:
                            last[entries[row][2]] = self._sample(ctx, row)
                        entries, owners = [], []
                if entries:
                    decode(entries)
                    for row in owners:
                        last[entries[row][2]] = self._sample(ctx, row)
                total += len(group)
                for step in range(1, n_new):  # decode: one token per sequence
                    decode([(last[s], len(p) + step - 1, s, True) for s, p in enumerate(group)])
                    last = [self._sample(ctx, s) for s in range(len(group))]
                    total += len(group)
        finally:
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)
        return total

    def fresh(self) -> None:
        self.llm.reset()


class _TimingStreamer:
    """transformers streamer that only timestamps: the first put() is the prompt, each later one
    a generated token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersRunner:
    """transformers float32: greedy generate(min_new_tokens = max_new_tokens); batches padded
    on the left."""

    compiled = False

    def __init__(self, threads: int) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.torch, self.Auto = torch, AutoModelForCausalLM

    def load(self, model_path: str, n_ctx: int | None, folder: str | None = None) -> None:
        torch = self.torch
        if folder:  # the float32 copy made by the `convert` task
            self.model = self.Auto.from_pretrained(folder, dtype=torch.float32)
        else:
            p = Path(model_path)
            self.model = self.Auto.from_pretrained(str(p.parent), gguf_file=p.name,
                                                   dtype=torch.float32)
        self.model.eval()

    def _generate(self, input_ids, attention_mask, n_new: int, streamer=None):
        with self.torch.inference_mode():
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       max_new_tokens=n_new, min_new_tokens=n_new,
                                       do_sample=False, pad_token_id=PAD_ID, streamer=streamer)

    def single(self, ids: list[int], n_new: int) -> tuple[float, float, int]:
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        st = _TimingStreamer()
        t0 = time.perf_counter()
        out = self._generate(x, torch.ones_like(x), n_new, st)
        t_end = time.perf_counter()
        # times[0]: the prompt was put (before the forward), times[1]: first token sampled.
        t_first = st.times[1] if len(st.times) > 1 else t_end
        return t_first - t0, st.times[-1] - t_first, int(out.shape[1] - len(ids))

    def batch(self, prompts: list[list[int]], n_new: int, mode: str, chunk: int = 64) -> int:
        torch = self.torch
        total = 0
        for start in range(0, len(prompts), chunk):
            group = prompts[start:start + chunk]
            width = max(len(p) for p in group)
            ids = torch.full((len(group), width), PAD_ID, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for i, p in enumerate(group):
                ids[i, width - len(p):] = torch.tensor(p)
                mask[i, width - len(p):] = 1
            out = self._generate(ids, mask, n_new)
            total += (out.shape[1] - width) * len(group)
        return total

    def fresh(self) -> None:
        pass


class TorchCompileRunner(TransformersRunner):
    """Plain PyTorch at its best on CPU: transformers' model with a static KV-cache, its decode
    step compiled by generate()'s own torch.compile path (inductor, fixed shapes; transformers
    does this on GPUs by default and on CPU when asked). The warm-up uses the measured shapes,
    so the timed run is compiled."""

    compiled = True

    def load(self, model_path: str, n_ctx: int | None, folder: str | None = None) -> None:
        from transformers.generation import CompileConfig

        super().load(model_path, n_ctx, folder)
        cc = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        cc._compile_all_devices = True  # transformers' switch to compile on CPU too
        self.model.generation_config.cache_implementation = "static"
        self.model.generation_config.compile_config = cc

    def stats(self) -> dict:
        from torch._dynamo.utils import counters

        return {"dynamo_unique_graphs": counters["stats"]["unique_graphs"],
                "dynamo_calls_captured": counters["stats"]["calls_captured"]}


class PyllmInt8Runner(PyllmRunner):
    """pyllm on llama.cpp's own numerics: `int8_activations=True` (activations quantized per
    32-value block, as llama.cpp does for its quantized matmuls) and a float16 KV-cache
    (llama.cpp's default cache type)."""

    int8 = True
    kv_dtype = "float16"


RUNNERS = {"pyllm": PyllmRunner, "pyllm-int8": PyllmInt8Runner, "llama.cpp": LlamaCppRunner,
           "transformers": TransformersRunner, "torch": TorchCompileRunner}


def _convert_for_transformers(model_path: str, out_dir: str) -> dict:
    """Dequantize the GGUF once with transformers and save it as float32 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    p = Path(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                 dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; its weights are plain float32 tensors, so
    # save the config and the state dict (the tied LM head once) directly.
    from safetensors.torch import save_file

    tmp = Path(out_dir + ".part")
    tmp.mkdir(parents=True)
    cfg = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    cfg.save_pretrained(str(tmp))
    model.generation_config.save_pretrained(str(tmp))
    sd = model.state_dict()
    if getattr(cfg, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous() for k, v in sd.items()},
              str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(out_dir)
    return {"folder": out_dir}


def run_worker(a: argparse.Namespace) -> int:
    """One engine, one task, in this fresh process; one JSON line on stdout."""
    # Libraries (llama.cpp's C code included) may print: keep fd 1 for our JSON line only.
    json_fd = os.dup(1)
    os.dup2(2, 1)
    res: dict[str, Any] = {"engine": a.worker, "task": a.task, "ok": False}
    try:
        args = json.loads(a.args or "{}")
        data = json.loads(Path(a.data).read_text()) if a.data else {}
        res["metrics"] = _worker_body(a, args, data, res)
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - report anything, the orchestrator goes on
        import traceback

        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
    res["peak_rss_mib"] = _mib_peak()
    res["vmhwm_mib"] = _proc_status_mib("VmHWM")
    os.write(json_fd, (json.dumps(res) + "\n").encode())
    return 0 if res["ok"] else 1


def _worker_body(a: argparse.Namespace, args: dict, data: dict, res: dict) -> dict:
    if a.task == "convert":
        return _convert_for_transformers(a.model, args["out"])
    if a.task == "tokenize":
        data = build_data(a.model, args["n_chat"], a.worker)
        Path(args["out"]).write_text(json.dumps(data))
        return {"text_tokens": len(data["text_ids"])}
    t0 = time.perf_counter()
    runner = RUNNERS[a.worker](a.threads)
    res["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if isinstance(runner, TransformersRunner):
        runner.load(a.model, args.get("n_ctx"), None if a.task == "load" else args.get("folder"))
    else:
        runner.load(a.model, args.get("n_ctx"))
    res["load_s"] = time.perf_counter() - t0
    res["rss_load_mib"] = _mib_peak()
    res["vmhwm_load_mib"] = _proc_status_mib("VmHWM")
    if a.task == "load":
        return {"load_s": res["load_s"], "vmhwm_mib": res["vmhwm_load_mib"],
                "ru_maxrss_mib": res["rss_load_mib"]}

    text, warm = data["text_ids"], data["warm_ids"]
    t0 = time.perf_counter()
    if a.task == "single":
        L, n_new = args["prompt_len"], args["n_new"]
        if getattr(runner, "compiled", False):  # compile for the measured shapes on other tokens
            runner.single(warm[:L], n_new)
        else:
            runner.single(warm[:8], 4)
        res["warmup_s"] = time.perf_counter() - t0
        pre_s, dec_s, n = runner.single(text[:L], n_new)
        m = {"prefill_s": pre_s, "prefill_tps": L / pre_s, "tokens": n}
        if hasattr(runner, "stats"):
            m.update(runner.stats())
        if n > 1:
            m["decode_s"] = dec_s
            m["decode_tps"] = (n - 1) / dec_s
            m["decode_ms_per_token"] = 1000 * dec_s / (n - 1)
        return m
    if a.task == "batch":
        n, n_new, mode = args["n"], args["n_new"], args.get("mode", "")
        prompts = data["chat_ids"][:n]
        runner.batch([warm[:8], warm[8:20]], 4, mode)
        runner.fresh()
        res["warmup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = runner.batch(prompts, n_new, mode)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "tokens": got, "expected_tokens": n * n_new, "tps": got / wall}
    if a.task == "scale":
        runner.batch([warm[:8], warm[8:20]], 4, "")
        m = {}
        for size in args["sizes"]:
            runner.fresh()
            t0 = time.perf_counter()
            got = runner.batch(data["chat_ids"][:size], args["n_new"], "")
            m[f"bs{size}_tps"] = got / (time.perf_counter() - t0)
        return m
    if a.task == "growth":
        runner.single(warm[:8], 4)
        m = {}
        offset = 0
        for L in args["prompt_lens"]:
            pre_s, dec_s, n = runner.single(text[offset:offset + L], 16)
            offset += L  # a different prompt each time: no cached prefix to reuse
            m[f"prompt{L}_prefill_ms"] = 1000 * pre_s
            m[f"prompt{L}_decode_ms_per_token"] = 1000 * dec_s / (n - 1)
        for G in args["gen_lens"]:
            pre_s, dec_s, n = runner.single(text[offset:offset + 32], G)
            offset += 32
            m[f"gen{G}_total_s"] = pre_s + dec_s
            m[f"gen{G}_decode_ms_per_token"] = 1000 * dec_s / (n - 1)
        return m
    raise ValueError(f"unknown task {a.task!r}")


# ====================================================================== prompts

_WORDS = ("the a of and to in is was for on with as by at from that this it its they their "
          "river mountain city market library garden engine window letter winter summer story "
          "village teacher doctor student farmer artist captain scientist child friend family "
          "walked opened found wrote carried watched built remembered followed discovered "
          "quietly slowly suddenly carefully often never always again together almost "
          "old new small large bright dark quiet busy strange ancient golden hidden narrow "
          "morning evening night road bridge tower forest island harbor castle kitchen door "
          "because when while after before although until since where which who").split()

_TOPICS = ("photosynthesis", "black holes", "the French Revolution", "machine learning",
           "volcanoes", "the water cycle", "jazz music", "the Roman Empire", "honeybees",
           "climate change", "the stock market", "vaccines", "chess openings", "the Moon",
           "electric cars", "coral reefs", "the printing press", "quantum computers", "tea",
           "the Great Wall of China", "recycling", "earthquakes", "the human heart", "bread",
           "the Internet", "penguins", "solar panels", "Shakespeare", "gravity", "origami",
           "the Olympic Games", "rainbows")
_ASKS = ("Explain {} in simple terms.", "Write a short poem about {}.",
         "What are three interesting facts about {}?", "How would you teach a child about {}?",
         "Give me a one-paragraph history of {}.", "What is a common misconception about {}?",
         "Summarize why {} matters today.", "Write a haiku about {}.")


def _words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    out, sentence = [], []
    for _ in range(n):
        sentence.append(rng.choice(_WORDS))
        if len(sentence) >= rng.randint(8, 18):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    return " ".join(out)


def chat_prompts(n: int) -> list[str]:
    """n distinct ChatML prompts (the model's template with its default system prompt)."""
    asks = [ask.format(topic) for ask in _ASKS for topic in _TOPICS]
    random.Random(7).shuffle(asks)
    return [f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            f"<|im_start|>assistant\n" for q in asks[:n]]


def build_data(model_path: str, n_chat: int, tokenizer: str) -> dict:
    """Token ids every engine is fed: a long text (prompts are its prefixes), a different text
    for warm-ups, and chat prompts, tokenized by `tokenizer` (llama.cpp or pyllm)."""
    text = "Once upon a time " + _words(1, 9000)
    warm = "Zebras " + _words(2, 9000)
    chats = chat_prompts(n_chat)
    if tokenizer == "llama.cpp":
        import llama_cpp

        voc = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)

        def enc(s: str, special: bool = False) -> list[int]:
            return voc.tokenize(s.encode(), add_bos=False, special=special)
    else:
        import pyllm

        llm = pyllm.load(model_path, progress=False)

        def enc(s: str, special: bool = False) -> list[int]:
            return llm.tokenizer.encode(s, add_bos=False, parse_special=special)
    data = {"text_ids": enc(text), "warm_ids": enc(warm),
            "chat_ids": [enc(c, special=True) for c in chats], "tokenizer": tokenizer}
    assert data["text_ids"][0] != data["warm_ids"][0]
    need = max(CTX_LENGTHS) + sum(GROWTH_PROMPTS) + 32 * len(GROWTH_GENERATED)
    if len(data["text_ids"]) < need:
        raise RuntimeError(f"benchmark text too short: {len(data['text_ids'])} < {need} tokens")
    return data


# ====================================================================== orchestrator


@dataclass
class Job:
    name: str        # the measurement: load, decode1, prefill, ctx1024, batch16x64, scale, ...
    engine: str
    task: str        # the worker's task: load | single | batch | scale | growth
    args: dict
    label: str       # the table column (an engine, or an engine's variant)
    timeout: float


@dataclass
class Record:
    job: str
    label: str
    engine: str
    repeat: int
    ok: bool
    wall_s: float
    result: dict = field(default_factory=dict)


def make_jobs(engines: list[str], tasks: list[str], full: bool, timeout: float,
              tf_folder: str | None) -> list[list[Job]]:
    """Groups of jobs; within a group the engines are interleaved at each repeat."""
    groups: list[list[Job]] = []

    def group(name: str, task: str, args: dict, engs: list[str] | None = None,
              extra: list[tuple[str, str, dict]] = (), limit: float = timeout) -> None:
        jobs = []
        for e in engs if engs is not None else engines:
            a = dict(args)
            if e in ("transformers", "torch") and tf_folder:
                a["folder"] = tf_folder
            jobs.append(Job(name, e, task, a, e, limit))
        for e, label, a in extra:
            if e in engines:
                jobs.append(Job(name, e, task, a, label, limit))
        if jobs:
            groups.append(jobs)

    def single(name: str, L: int, n_new: int) -> None:
        group(name, "single", {"prompt_len": L, "n_new": n_new, "n_ctx": _round_ctx(L + n_new)})

    if "load" in tasks:
        group("load", "load", {"n_ctx": 512})
    if "decode1" in tasks:
        single("decode1", 16, 128)
    if "prefill" in tasks:
        single("prefill", 256, 1)
    if "ctx" in tasks:
        for L in CTX_LENGTHS:
            single(f"ctx{L}", L, 32)
    if "batch" in tasks:
        shapes = [(16, 64)] + ([(256, 128)] if full else [])
        for n, n_new in shapes:
            args = {"n": n, "n_new": n_new}
            engs = [e for e in engines if e != "torch"]  # generate() batches: same as transformers
            engs = [e for e in engs if e != "llama.cpp"]
            group(f"batch{n}x{n_new}", "batch", args, engs,
                  extra=[("llama.cpp", "llama.cpp", dict(args, mode="seq", n_ctx=512)),
                         ("llama.cpp", "llama.cpp batched", dict(args, mode="batched",
                                                                 n_ctx=512))],
                  limit=timeout * (1 if n <= 16 else 8))  # 256 x 128 one by one: minutes
    if "scale" in tasks and "pyllm" in engines:
        group("scale", "scale", {"sizes": list(SCALE_SIZES), "n_new": 64},
              [e for e in ("pyllm", "pyllm-int8") if e in engines])
    if "growth" in tasks and "pyllm" in engines:
        group("growth", "growth", {"prompt_lens": list(GROWTH_PROMPTS),
                                   "gen_lens": list(GROWTH_GENERATED),
                                   "n_ctx": _round_ctx(max(GROWTH_PROMPTS) + 16)}, ["pyllm"])
    return groups


def spawn(engine: str, task: str, args: dict, model: str, data_path: str | None, threads: int,
          timeout: float) -> tuple[bool, dict, float]:
    """Run one worker in its own process group; (ok, its JSON, wall seconds)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--task", task,
           "--model", model, "--threads", str(threads), "--args", json.dumps(args)]
    if data_path:
        cmd += ["--data", data_path]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group (inductor spawns helpers)
        proc.communicate()
        return False, {"error": f"timed out after {timeout:.0f} s", "timeout": True}, timeout
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if lines:
        try:
            res = json.loads(lines[-1])
            return bool(res.get("ok")), res, wall
        except json.JSONDecodeError:
            pass
    tail = " | ".join(err.strip().splitlines()[-3:])
    return False, {"error": f"worker exited {proc.returncode} without a result: {tail}"}, wall


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(records: list[Record]) -> dict[tuple[str, str], dict[str, Any]]:
    """(job, label) -> {metric: median over ok repeats, "n_ok", "n", "errors"}."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        s = out.setdefault((r.job, r.label), {"n": 0, "n_ok": 0, "errors": [], "_m": {}})
        s["n"] += 1
        if r.ok:
            s["n_ok"] += 1
            for k, v in (r.result.get("metrics") or {}).items():
                if isinstance(v, (int, float)):
                    s["_m"].setdefault(k, []).append(float(v))
            for k in ("peak_rss_mib", "vmhwm_mib", "load_s", "import_s", "rss_load_mib"):
                if isinstance(r.result.get(k), (int, float)):
                    s["_m"].setdefault("proc_" + k, []).append(float(r.result[k]))
        else:
            s["errors"].append(r.result.get("error", "?"))
    for s in out.values():
        s["median"] = {k: _median(v) for k, v in s.pop("_m").items()}
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 1 else f"{v:.3f}"


@dataclass
class Row:
    title: str
    job: str
    metric: str
    higher_better: bool
    target: str = ""         # "x2" (>= 2x llama.cpp), "x5", "<=1.2x", "<=0.5s"


ISSUE_ROWS = [
    Row("load time, s (after imports)", "load", "load_s", False, "<=0.5s"),
    Row("peak RSS after load (VmHWM), MiB", "load", "vmhwm_mib", False),
    Row("decode b1, 128 tok, tok/s", "decode1", "decode_tps", True, "x2"),
    Row("peak RSS of decode1 (VmHWM), MiB", "decode1", "proc_vmhwm_mib", False, "<=1.2x"),
    Row("  ru_maxrss of decode1, MiB", "decode1", "proc_peak_rss_mib", False),
    Row("prefill 256 tok, tok/s", "prefill", "prefill_tps", True, "x2"),
    *[Row(f"decode @ctx {L}, tok/s", f"ctx{L}", "decode_tps", True, "x2") for L in CTX_LENGTHS],
    *[Row(f"prefill {L} tok (ctx run), tok/s", f"ctx{L}", "prefill_tps", True)
      for L in CTX_LENGTHS],
    Row("16 chat x 64 new, tok/s", "batch16x64", "tps", True, "x5"),
    Row("256 x 128 new, tok/s", "batch256x128", "tps", True, "x5"),
]


def render(summary: dict, labels: list[str], out=sys.stdout) -> list[dict]:
    """Print the comparison table; return its rows (for --json)."""
    table: list[dict] = []
    cols = [lb for lb in ("pyllm", "pyllm-int8", "llama.cpp", "llama.cpp batched", "transformers",
                          "torch") if lb in labels]

    def get(job: str, label: str, metric: str) -> float | None:
        s = summary.get((job, label))
        return None if s is None else s["median"].get(metric)

    def cell(job: str, label: str, metric: str) -> str:
        s = summary.get((job, label))
        if s is None:
            return "-"
        v = s["median"].get(metric)
        if v is None:
            return "ERR" if s["n_ok"] == 0 else "-"
        return _fmt(v) + ("*" if s["n_ok"] < s["n"] else "")

    has_tf = "transformers" in cols
    has_int8 = "pyllm-int8" in cols
    head = (["measurement"] + cols + ["pyllm/llama.cpp"] + (["int8/llama.cpp"] if has_int8 else [])
            + (["pyllm/transf."] if has_tf else []) + ["target", "status"])
    lines = []
    for row in ISSUE_ROWS:
        if not any((row.job, lb) in summary for lb in cols):
            continue
        p = get(row.job, "pyllm", row.metric)
        refs = [get(row.job, lb, row.metric) for lb in ("llama.cpp", "llama.cpp batched")]
        refs = [r for r in refs if r]
        # the best llama.cpp figure (for batches: batched or sequential, whichever is better)
        ref = (max(refs) if row.higher_better else min(refs)) if refs else None
        tf = get(row.job, "transformers", row.metric)
        r_l = p / ref if p and ref else None
        r_t = p / tf if p and tf else None
        p8 = get(row.job, "pyllm-int8", row.metric)
        r_8 = p8 / ref if p8 and ref else None
        status, target = "", ""
        if row.target == "x2" or row.target == "x5":
            k = 2 if row.target == "x2" else 5
            target = f">= {k}x llama.cpp"
            status = "n/a" if r_l is None else ("met" if r_l >= k else "missed")
            if r_8 is not None:  # int8 activations: the numerics llama.cpp itself runs with
                status += "; int8 " + ("met" if r_8 >= k else "missed")
        elif row.target == "<=1.2x":
            target = "<= 1.2x llama.cpp"
            status = "n/a" if r_l is None else ("met" if r_l <= 1.2 else "missed")
        elif row.target == "<=0.5s":
            target = "<= 0.5 s"
            status = "n/a" if p is None else ("met" if p <= 0.5 else "missed")
        lines.append([row.title] + [cell(row.job, lb, row.metric) for lb in cols]
                     + [_fmt(r_l, 2) if r_l else "-"]
                     + ([_fmt(r_8, 2) if r_8 else "-"] if has_int8 else [])
                     + ([_fmt(r_t, 2) if r_t else "-"] if has_tf else []) + [target, status])
        table.append({"measurement": row.title, "job": row.job, "metric": row.metric,
                      **{lb: get(row.job, lb, row.metric) for lb in cols},
                      "pyllm/llama.cpp": r_l, "pyllm-int8/llama.cpp": r_8,
                      "pyllm/transformers": r_t, "target": target,
                      "status": status})
    if lines:
        widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
        sep = "  "
        print(sep.join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(head, widths))), file=out)
        print(sep.join("-" * w for w in widths), file=out)
        for ln in lines:
            print(sep.join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                           for i, (x, w) in enumerate(zip(ln, widths))), file=out)
        print("(* = some repeats failed; ratios use the best llama.cpp figure; "
              "RSS and load: lower is better; status: the exact pyllm column, then for speed "
              "the int8 one, which runs llama.cpp's numerics: int8 activations, f16 KV-cache)", file=out)
    _render_pyllm_only(summary, out)
    errs = [(job, lb, e) for (job, lb), s in summary.items() for e in s["errors"]]
    if errs:
        print("\nerrors:", file=out)
        seen = set()
        for job, lb, e in errs:
            if (job, lb, e) not in seen:
                seen.add((job, lb, e))
                print(f"  {job} / {lb}: {e[:300]}", file=out)
    return table


def _render_pyllm_only(summary: dict, out) -> None:
    for label in ("pyllm", "pyllm-int8"):
        _render_scale(summary, label, out)
    _render_growth(summary, out)


def _render_scale(summary: dict, label: str, out) -> None:
    s = summary.get(("scale", label))
    if s and s["n_ok"]:
        m = s["median"]
        base = m.get("bs1_tps")
        print(f"\n{label} throughput by batch size (chat prompts x 64 new tokens, "
              "EngineFrontend.run_all):", file=out)
        for size in SCALE_SIZES:
            v = m.get(f"bs{size}_tps")
            grow = f"  x{v / base:.2f} of batch 1" if v and base else ""
            print(f"  batch {size:3d}: {_fmt(v):>8} tok/s{grow}", file=out)


def _render_growth(summary: dict, out) -> None:
    s = summary.get(("growth", "pyllm"))
    if s and s["n_ok"]:
        m = s["median"]
        print("\npyllm cost growth (batch 1):", file=out)
        for L in GROWTH_PROMPTS:
            pre, dec = m.get(f"prompt{L}_prefill_ms"), m.get(f"prompt{L}_decode_ms_per_token")
            per = f"{pre / L:.2f} ms/prompt token" if pre else "-"
            print(f"  prompt {L:5d}: prefill {_fmt(pre):>8} ms ({per}), then decode "
                  f"{_fmt(dec, 2)} ms/token", file=out)
        for G in GROWTH_GENERATED:
            tot, dec = m.get(f"gen{G}_total_s"), m.get(f"gen{G}_decode_ms_per_token")
            print(f"  generate {G:4d} after 32: total {_fmt(tot, 2)} s, decode "
                  f"{_fmt(dec, 2)} ms/token", file=out)


def _machine() -> dict:
    info = {"python": platform.python_version(), "cores": os.cpu_count(),
            "loadavg_start": os.getloadavg()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    for dist in ("torch", "transformers", "llama_cpp_python", "pyllm"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        info["pyllm_git"] = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


def ensure_transformers_copy(model: str, threads: int) -> str | None:
    """The float32 safetensors copy transformers loads for every task but `load` (made once)."""
    from importlib import metadata

    from pyllm.weights.pull import pyllm_home

    stat = Path(model).stat()
    folder = pyllm_home() / "bench" / (f"{Path(model).stem}-{stat.st_size}-f32-"
                                        f"transformers{metadata.version('transformers')}")
    if (folder / "config.json").exists():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    part = Path(str(folder) + ".part")
    if part.exists():
        import shutil

        shutil.rmtree(part)
    print(f"making the float32 copy for transformers in {folder} (once) ...", file=sys.stderr)
    ok, res, wall = spawn("transformers", "convert", {"out": str(folder)}, model, None, threads,
                          900)
    if not ok:
        print(f"  failed ({res.get('error')}); transformers will load the GGUF in every worker",
              file=sys.stderr)
        return None
    print(f"  done in {wall:.0f} s", file=sys.stderr)
    return str(folder)


def orchestrate(a: argparse.Namespace) -> int:
    from pyllm.weights.pull import ensure_default_model

    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    tasks = []
    for t in (x.strip() for x in a.tasks.split(",") if x.strip()):
        tasks += {"all": list(ALL_TASKS), "issue4": list(ISSUE4_TASKS),
                  "issue7": list(ISSUE7_TASKS)}.get(t, [t])
    bad += [t for t in tasks if t not in ALL_TASKS]
    if bad:
        print(f"unknown engine or task: {', '.join(bad)} (engines: {', '.join(ENGINES)}; "
              f"tasks: {', '.join(ALL_TASKS)}, all, issue4, issue7)", file=sys.stderr)
        return 2
    model = a.model or str(ensure_default_model(progress=True))
    info = _machine()
    native_kquants = os.environ.get("PYLLM_NATIVE_KQUANTS") != "0"
    info.update(model=model, threads=a.threads, repeats=a.repeats, engines=engines, tasks=tasks,
                full=a.full, command=" ".join(sys.argv), native_kquants=native_kquants)
    print(f"model {Path(model).name}{'' if native_kquants else ' (PYLLM_NATIVE_KQUANTS=0)'}; "
          f"{a.threads} threads; {a.repeats} repeats; "
          f"cpu {info.get('cpu')}; load average {info['loadavg_start'][0]:.1f}", file=sys.stderr)

    # Everything heavy happens in workers: a worker's ru_maxrss starts at the orchestrator's
    # peak (Linux keeps it across fork + exec), so the orchestrator stays small (~25 MiB).
    tmp = tempfile.TemporaryDirectory(prefix="pyllm-bench-")
    data_path = str(Path(tmp.name) / "prompts.json")
    for tok in ("llama.cpp", "pyllm"):
        ok, res, _ = spawn(tok, "tokenize", {"out": data_path, "n_chat": 256 if a.full else
                                             max(SCALE_SIZES)}, model, None, a.threads, 600)
        if ok:
            info["tokenizer"] = tok
            break
        print(f"tokenizing with {tok} failed: {res.get('error')}", file=sys.stderr)
    else:
        return 1
    tf_folder = None
    if any(e in engines for e in ("transformers", "torch")) and set(tasks) - {"load"}:
        tf_folder = ensure_transformers_copy(model, a.threads)

    groups = make_jobs(engines, tasks, a.full, a.timeout, tf_folder)
    records: list[Record] = []
    timed_out: set[tuple[str, str]] = set()
    t_start = time.perf_counter()
    for rep in range(a.repeats):
        for jobs in groups:
            shift = rep % len(jobs)  # rotate who goes first: A B C, B C A, ...
            for job in jobs[shift:] + jobs[:shift]:
                if (job.name, job.label) in timed_out:
                    continue  # a timeout costs minutes: do not pay it again
                ok, res, wall = spawn(job.engine, job.task, job.args, model, data_path,
                                      a.threads, job.timeout)
                records.append(Record(job.name, job.label, job.engine, rep, ok, wall, res))
                if res.get("timeout"):
                    timed_out.add((job.name, job.label))
                brief = _brief(job, res) if ok else "FAILED: " + str(res.get("error"))[:200]
                print(f"[{rep + 1}/{a.repeats} {time.perf_counter() - t_start:6.0f}s] "
                      f"{job.name:<13} {job.label:<18} {brief}  ({wall:.1f} s)",
                      file=sys.stderr, flush=True)
    info["loadavg_end"] = os.getloadavg()
    info["total_s"] = time.perf_counter() - t_start
    summary = summarize(records)
    labels = sorted({r.label for r in records})
    print(f"\npyllm vs peers: {Path(model).name}"
          f"{'' if native_kquants else ' (PYLLM_NATIVE_KQUANTS=0)'}, {a.threads} threads, "
          f"medians of {a.repeats} "
          f"fresh processes each; load average {info['loadavg_start'][0]:.1f} -> "
          f"{info['loadavg_end'][0]:.1f}; {info['total_s']:.0f} s in all\n")
    cores = os.cpu_count() or 1
    if max(info["loadavg_start"][0], info["loadavg_end"][0]) > 1.5 * cores:
        print(f"WARNING: the machine was busy (load average above {1.5 * cores:.0f} on {cores} "
              "cores): the figures are distorted, and llama.cpp more than the others (its "
              "threads spin at each barrier and lose badly when cores are oversubscribed).\n")
    table = render(summary, labels)
    if a.json:
        raw = {"machine": info, "table": table,
               "medians": {f"{job} | {lb}": s for (job, lb), s in summary.items()},
               "runs": [asdict(r) for r in records]}
        Path(a.json).write_text(json.dumps(raw, indent=1, default=str))
        print(f"\nraw numbers: {a.json}")
    tmp.cleanup()
    return 0


def _brief(job: Job, res: dict) -> str:
    m = res.get("metrics") or {}
    keys = ("decode_tps", "prefill_tps", "tps", "load_s")
    parts = [f"{k}={_fmt(m[k])}" for k in keys if k in m]
    if job.task == "scale":
        parts = [f"{k}={_fmt(v)}" for k, v in m.items()]
    if job.task == "growth":
        parts = [f"{len(m)} figures"]
    parts.append(f"VmHWM={_fmt(res.get('vmhwm_mib'))}MiB")
    if "load_s" in res:
        parts.append(f"load={res['load_s']:.2f}s")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma list of {', '.join(ENGINES)} (torch = transformers + static "
                        "cache + torch.compile; slow to compile, not in the default)")
    p.add_argument("--tasks", default=",".join(ISSUE4_TASKS),
                   help=f"comma list of {', '.join(ALL_TASKS)}, or all / issue4 / issue7")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per engine x task")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true", help="batch: also 256 prompts x 128 tokens")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds per worker; a job that times out is not repeated")
    p.add_argument("--json", help="save machine info, medians and every run's numbers here")
    p.add_argument("--model", help="GGUF path (default: pyllm's default model, pulled if needed)")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return run_worker(a)
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
