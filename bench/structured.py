"""Structured output's cost: the same requests constrained (JSON schema) and unconstrained.

    python bench/structured.py                       # default model, batches 1 and 16
    python bench/structured.py --batches 1 --new 48 --repeats 2 --model PATH.gguf

For each batch size B, B chat prompts each ask for JSON matching one schema of a small suite
(cycled). The constrained run samples at temperature 0.8 with seeds; the unconstrained run then
sends the same prompts and seeds with ``max_tokens`` set to the number of tokens each constrained
output had and EOS ignored, so both generate exactly the same number of tokens and tokens/s
compares like with like. Runs alternate (round-robin repeats, medians). Printed per batch size:

    tokens/s      generated tokens / wall time, constrained and unconstrained, and their ratio
    cpu ms/tok    this process's CPU time (every thread: forward, sampler, mask worker) per
                  generated token, constrained and unconstrained: steadier than wall time on a
                  shared machine, and it counts the mask's work even where the forward hides it
    mask ms/step  the mask's own time per engine step (all rows of the step, on its worker thread)
    wait ms/step  the part of it the engine waited for after the forward (what was not hidden)
    valid         outputs that finished and validate against their schema (jsonschema)

With llama-cpp-python installed, the same prompts and schemas go one at a time through its
``create_chat_completion(response_format={"type": "json_object", "schema": ...})`` on the same
GGUF (its Python API has no batching): valid fraction and tokens/s, printed beside pyllm's
batch-1 figures. Without it, the reason is printed and that column skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object",
     "properties": {"city": {"type": "string", "maxLength": 24},
                    "country": {"type": "string", "maxLength": 24},
                    "population": {"type": "integer", "minimum": 0}},
     "required": ["city", "country", "population"], "additionalProperties": False},
    {"type": "object",
     "properties": {"name": {"type": "string", "maxLength": 20},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16},
                                "minItems": 1, "maxItems": 3}},
     "required": ["name", "age", "hobbies"], "additionalProperties": False},
    {"type": "object",
     "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["sentiment", "confidence"], "additionalProperties": False},
]
QUESTIONS = [
    "Describe Paris as JSON with its city, country and population.",
    "Invent a person and describe them as JSON with name, age and hobbies.",
    "Classify the sentiment of 'I loved this film' as JSON with sentiment and confidence.",
]


def _requests(B: int) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    out = []
    for b in range(B):
        k = b % len(SCHEMAS)
        msg = QUESTIONS[k] + " Schema: " + json.dumps(SCHEMAS[k])
        out.append(([{"role": "user", "content": msg}], SCHEMAS[k]))
    return out


def _valid(text: str, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def bench_pyllm(llm: Any, B: int, new: int, repeats: int) -> dict[str, float]:
    from pyllm import SamplingParams

    reqs = _requests(B)
    prompts = [m for m, _ in reqs]
    constrained = [SamplingParams(temperature=0.8, seed=b, max_tokens=new, json_schema=s)
                   for b, (_, s) in enumerate(reqs)]
    first = llm.generate(prompts, constrained)  # warm-up; fixes each output's length
    lengths = [max(1, len(r.token_ids)) for r in first]
    plain = [SamplingParams(temperature=0.8, seed=b, max_tokens=n, ignore_eos=True)
             for b, n in enumerate(lengths)]
    llm.generate(prompts, plain)
    with llm.engine.exclusive() as engine:
        engine.compile_constraint(constrained[0])  # the mask worker exists from here on
        worker = engine._masks
    t_c, t_u, cpu_c, cpu_u, mask, wait = [], [], [], [], [], []
    valid = 0
    for _ in range(repeats):
        steps0 = engine_steps(llm)
        m0, w0 = worker.total_seconds, worker.wait_seconds
        t0, c0 = time.perf_counter(), time.process_time()
        res = llm.generate(prompts, constrained)
        t_c.append(time.perf_counter() - t0)
        cpu_c.append(time.process_time() - c0)
        steps = max(1, engine_steps(llm) - steps0)
        mask.append((worker.total_seconds - m0) / steps)
        wait.append((worker.wait_seconds - w0) / steps)
        valid = sum(r.finish_reason == "stop" and _valid(r.text, s) for r, (_, s) in zip(res, reqs))
        t0, c0 = time.perf_counter(), time.process_time()
        llm.generate(prompts, plain)
        t_u.append(time.perf_counter() - t0)
        cpu_u.append(time.process_time() - c0)
    tokens = sum(lengths)
    return {"tok_s_constrained": tokens / statistics.median(t_c),
            "tok_s_plain": tokens / statistics.median(t_u),
            "cpu_ms_constrained": 1e3 * statistics.median(cpu_c) / tokens,
            "cpu_ms_plain": 1e3 * statistics.median(cpu_u) / tokens,
            "mask_ms": 1e3 * statistics.median(mask), "wait_ms": 1e3 * statistics.median(wait),
            "valid": valid / B, "tokens": tokens}


def engine_steps(llm: Any) -> int:
    with llm.engine.exclusive() as engine:
        return engine.stats["steps"]


def bench_llama_cpp(path: str, new: int, n: int) -> dict[str, float] | str:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        return f"llama-cpp-python not installed ({exc})"
    llm = Llama(model_path=path, n_ctx=2048, verbose=False, seed=0)
    reqs = _requests(n)
    tokens, valid, seconds = 0, 0, 0.0
    for b, (messages, schema) in enumerate(reqs):
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, max_tokens=new, temperature=0.8,
                                         seed=b, response_format={"type": "json_object",
                                                                  "schema": schema})
        seconds += time.perf_counter() - t0
        tokens += out["usage"]["completion_tokens"]
        valid += _valid(out["choices"][0]["message"]["content"], schema)
    return {"tok_s": tokens / seconds, "valid": valid / n, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=64, help="max tokens per request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-requests", type=int, default=6,
                    help="requests sent through llama-cpp-python (one at a time)")
    args = ap.parse_args()

    import pyllm
    from pyllm.weights.resolve import resolve_model

    path = resolve_model(args.model, progress=True)
    llm = pyllm.load(path, progress=False)
    print(f"model {path}  max_tokens {args.new}  repeats {args.repeats}")
    print(f"{'B':>3} {'tok/s constr':>13} {'tok/s plain':>12} {'ratio':>6} "
          f"{'cpu ms/tok constr':>18} {'cpu ms/tok plain':>17} {'mask ms/step':>13} "
          f"{'wait ms/step':>13} {'valid':>6}")
    for B in (int(b) for b in args.batches.split(",")):
        r = bench_pyllm(llm, B, args.new, args.repeats)
        print(f"{B:>3} {r['tok_s_constrained']:>13.1f} {r['tok_s_plain']:>12.1f} "
              f"{r['tok_s_constrained'] / r['tok_s_plain']:>6.2f} "
              f"{r['cpu_ms_constrained']:>18.2f} {r['cpu_ms_plain']:>17.2f} {r['mask_ms']:>13.3f} "
              f"{r['wait_ms']:>13.3f} {r['valid']:>6.2f}")
    peer = bench_llama_cpp(str(path), args.new, args.peer_requests)
    if isinstance(peer, str):
        print(f"llama-cpp-python: skipped: {peer}")
    else:
        print(f"llama-cpp-python response_format (batch 1, {args.peer_requests} requests): "
              f"{peer['tok_s']:.1f} tok/s, valid {peer['valid']:.2f}")


if __name__ == "__main__":
    main()
