"""What a decode step costs around the model: pyllm's engine against transformers' generate loop.

    python bench/engine_overhead.py                      # batches 1, 8, 64; 3 repeats
    python bench/engine_overhead.py --batches 64 --repeats 5 --new 128

The model is a tiny random Llama (2 layers, 64 wide, 256 tokens: scripts/make_random_llama.py),
written once as a GGUF for pyllm and as float32 safetensors for transformers, so the forward
costs next to nothing and a step's time is the framework's: scheduling, metadata, sampling,
detokenizing, the Python around the kernels. On a GPU this is the time the device waits each
step (a batch-64 step of SmolLM2 is ~10 ms there), so it bounds tokens/s at small models and
large batches. Columns:

    pyllm         LLMEngine as on the CPU (the fast C++ forward, the sampler after it)
    pyllm-graph   LLMEngine with the CUDA graph runner's decode path without capture
                  (graphs=False): host metadata copied into static buffers, the sampler run
                  as in the graph; what a GPU step does on the host, plus a CPU forward
    transformers  generate(), greedy, float32, eager, padded batch (min_new_tokens = new)

Every engine decodes `--new` tokens greedily after 16-token prompts (EOS never ends a row), on
one thread; round-robin repeats, medians, ms per decode step and the ratios to transformers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_random_llama as M  # noqa: E402

SHAPE = M.SHAPES["tiny"]
PROMPT_LEN = 16


def prompts(batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(3, SHAPE["vocab"], (batch, PROMPT_LEN), generator=g).tolist()


def pyllm_step_ms(model, batch: int, new: int, graph_path: bool) -> float:
    """ms per decode step: the engine's decode steps after the prefill step."""
    from pyllm.engine.llm_engine import EngineConfig, LLMEngine
    from pyllm.model.cuda_graph import CudaGraphRunner
    from pyllm.sampling_params import SamplingParams

    engine = LLMEngine(model, M.ByteTokenizer(), EngineConfig(kv_cache_tokens=batch * (PROMPT_LEN + new + 16),
                                                            max_num_seqs=batch,
                                                            max_num_batched_tokens=batch * PROMPT_LEN))
    if graph_path:
        engine.forward = CudaGraphRunner(model, max_batch=batch, graphs=False, host_metadata=True)
    for i, p in enumerate(prompts(batch)):
        engine.add_request(i, p, SamplingParams.greedy(max_tokens=new, ignore_eos=True))
    engine.step()  # the prefill: every prompt in one step
    start, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return (time.perf_counter() - start) / steps * 1e3


def transformers_step_ms(hf_model, batch: int, new: int) -> float:
    """ms per decode step: (generate of `new` tokens - generate of 1 token) / (new - 1)."""
    ids = torch.tensor(prompts(batch))
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        start = time.perf_counter()
        hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    return (run(new) - run(1)) / (new - 1) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    ap.add_argument("--new", type=int, default=64, help="tokens decoded a request")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)

    import transformers
    from transformers import AutoModelForCausalLM

    from pyllm.model.loader import load_model

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        state = M.write_random_llama(Path(tmp) / "tiny.gguf", SHAPE, seed=1)
        M.write_hf_folder(Path(tmp) / "hf", SHAPE, state, dtype=torch.float32)
        model = load_model(Path(tmp) / "tiny.gguf").model
        hf_model = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.float32).eval()

    engines = {
        "pyllm": lambda b: pyllm_step_ms(model, b, args.new, graph_path=False),
        "pyllm-graph": lambda b: pyllm_step_ms(model, b, args.new, graph_path=True),
        "transformers": lambda b: transformers_step_ms(hf_model, b, args.new),
    }
    times: dict[tuple[str, int], list[float]] = {}
    for name, fn in engines.items():  # warm-up: first calls build runners and caches
        fn(batches[0])
    with torch.inference_mode():
        for r in range(args.repeats):
            order = list(engines.items())
            order = order[r % len(order):] + order[:r % len(order)]
            for b in batches:
                for name, fn in order:
                    times.setdefault((name, b), []).append(fn(b))

    print(f"decode step, ms (median of {args.repeats}); tiny random Llama, {args.new} new tokens, 1 thread")
    print(f"{'batch':>5}  " + "  ".join(f"{n:>12}" for n in engines) + "   pyllm/tf  pyllm-graph/tf")
    for b in batches:
        med = {n: statistics.median(times[(n, b)]) for n in engines}
        cells = "  ".join(f"{med[n]:12.3f}" for n in engines)
        print(f"{b:>5}  {cells}   {med['transformers'] / med['pyllm']:7.1f}x  "
              f"{med['transformers'] / med['pyllm-graph']:13.1f}x")
    print("(ratios: how many times faster than transformers a step is)")


if __name__ == "__main__":
    main()
