"""The engine against the simple generation loop, on a tiny random Llama with SmolLM2's
tokenizer: continuous batching, chunked prefill, preemption and prefix sharing must not change a
single greedy token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pyllm.engine.llm_engine import CannotFitError, EngineConfig, LLMEngine
from pyllm.generation import generate_stream
from pyllm.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_random_llama as M  # noqa: E402

# SmolLM2's vocabulary (its tokenizer below) on a 2-layer model
SHAPE = dict(n_layer=2, n_embd=64, n_ff=128, n_head=4, n_kv_head=2, vocab=49152, context=256,
             rope_theta=10000.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_path):
    from pyllm.model.loader import load_hf
    from pyllm.tokenizer import load_tokenizer
    from pyllm.weights.gguf import load_gguf

    folder = tmp_path_factory.mktemp("tiny-llama")
    state = M.write_random_llama(folder / "tiny.gguf", SHAPE, seed=0)
    M.write_hf_folder(folder / "hf", SHAPE, state, torch.float32)
    model = load_hf(folder / "hf").model
    tokenizer = load_tokenizer(load_gguf(smollm2_path).metadata)
    return model, tokenizer


PROMPTS = ["The quick brown fox", "Once upon a time in a land far away, there lived",
           "def fib(n):", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "Hi"]


def _reference(model, tokenizer, prompts, params):
    out = {}
    for ev in generate_stream(model, tokenizer, prompts, params):
        if ev.finished:
            out[(ev.request, ev.output)] = ev.completion.token_ids
    return out


def _engine(model, tokenizer, prompts, params, **config):
    engine = LLMEngine(model, tokenizer, EngineConfig(**config))
    out = {}
    for ev in engine.run((i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))):
        if ev.finished:
            out[(ev.request, ev.output)] = ev.completion.token_ids
    return out, engine


def _ids(tokenizer):
    return [tokenizer.encode(p) for p in PROMPTS]


@pytest.mark.parametrize("config", [
    dict(kv_cache_tokens=2048),                               # everything fits, one batch
    dict(kv_cache_tokens=2048, max_num_batched_tokens=7),     # chunked prefill
    dict(kv_cache_tokens=2048, max_num_seqs=2),               # sequences join as others leave
    dict(kv_cache_tokens=96, block_size=4),                   # preemption by recompute
])
def test_engine_matches_simple_loop(tiny, config):
    model, tok = tiny
    prompts = _ids(tok)
    params = [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True) for _ in prompts]
    want = _reference(model, tok, prompts, params)
    got, engine = _engine(model, tok, prompts, params, **config)
    assert got == want
    if config.get("kv_cache_tokens") == 96:
        assert engine.scheduler.num_preemptions > 0
    assert engine.blocks.num_free_blocks == engine.num_blocks  # every block came back


def test_prefix_sharing_prefills_common_prefix_once(tiny):
    model, tok = tiny
    shared = tok.encode("A long shared system prompt that every request starts with. " * 4)
    prompts = [shared + tok.encode(f" Question {i}?") for i in range(4)]
    params = [SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)] * 4
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_tokens=2048, max_num_seqs=1))
    results = {}
    for ev in engine.run((i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))):
        if ev.finished:
            results[ev.request] = ev.completion.token_ids
    full = sum(len(p) for p in prompts) + 4 * 3  # every prompt, plus fed-back decode tokens
    shared_blocks = len(shared) // 16
    assert engine.stats["computed_tokens"] <= full - 3 * shared_blocks * 16
    assert results == {k: v for (k, _), v in _reference(model, tok, prompts, params).items()}


@pytest.mark.parametrize("budget", [512, 40])
def test_prompts_arriving_together_prefill_their_common_prefix_once(tiny, budget):
    model, tok = tiny
    shared = tok.encode("A long shared system prompt that every request starts with. " * 4)
    prompts = [shared + tok.encode(f" Question {i}?") for i in range(4)]
    params = [SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)] * 4
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_tokens=2048, max_num_batched_tokens=budget))
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(i, p, sp)  # all queued before the first step
    results = {}
    while engine.has_unfinished():
        for ev in engine.step():
            if ev.finished:
                results[ev.request] = ev.completion.token_ids
    full = sum(len(p) for p in prompts) + 4 * 3
    if budget == 512:  # one step admits all four; three of them reuse the first one's blocks
        assert engine.stats["computed_tokens"] == full - 3 * (len(shared) // 16) * 16
    else:  # chunked: a later prompt shares only the blocks computed before or with its chunk
        assert engine.stats["computed_tokens"] < full
    assert results == {k: v for (k, _), v in _reference(model, tok, prompts, params).items()}
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_a_failed_step_is_recomputed_and_changes_no_token(tiny):
    """A step that raises (Ctrl-C in the forward) may have written part of its K/V, and prompts
    admitted with it may share blocks it was to fill: every sequence of it starts over."""
    model, tok = tiny
    shared = tok.encode("A long shared system prompt that every request starts with. " * 4)
    prompts = [shared + tok.encode(f" Question {i}?") for i in range(3)]
    params = [SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)] * 3
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_tokens=2048))
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(i, p, sp)
    real, calls = engine.forward, []

    def interrupted_once(ids, meta, caches, rows):
        calls.append(len(ids))
        if len(calls) == 1:
            real(torch.zeros_like(ids), meta, caches, rows)  # the wrong K/V in every slot
            raise KeyboardInterrupt
        return real(ids, meta, caches, rows)

    engine.forward = interrupted_once
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    assert engine.scheduler.num_preemptions == 3 and not engine.scheduler.running
    engine.abort(0)  # the prompt whose chunk was to fill the shared blocks does not come back
    results = {}
    while engine.has_unfinished():
        for ev in engine.step():
            if ev.finished:
                results[ev.request] = ev.completion.token_ids
    want = _reference(model, tok, prompts[1:], params[1:])
    assert results == {k + 1: v for (k, _), v in want.items()}
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_n_completions_share_the_prompt_and_differ_by_seed(tiny):
    model, tok = tiny
    prompt = tok.encode("Tell me a story about a robot")
    params = SamplingParams(max_tokens=6, temperature=0, n=3, ignore_eos=True)
    got, engine = _engine(model, tok, [prompt], [params], kv_cache_tokens=512)
    assert sorted(got) == [(0, 0), (0, 1), (0, 2)]
    assert got[(0, 0)] == got[(0, 1)] == got[(0, 2)]  # greedy: identical
    assert engine.stats["computed_tokens"] == len(prompt) + 3 * 5  # the prompt ran once


def test_stop_strings_and_abort(tiny):
    model, tok = tiny
    prompt = tok.encode("The quick brown fox")
    free_run = _reference(model, tok, [prompt], [SamplingParams(max_tokens=12, temperature=0,
                                                                ignore_eos=True)])
    text = tok.decode(free_run[(0, 0)])
    stop = text[len(text) // 2: len(text) // 2 + 3]
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_tokens=512))
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[stop])
    events = list(engine.run([(0, prompt, params)]))
    final = events[-1].completion
    assert final.finish_reason == "stop"
    assert stop not in final.text and text.startswith(final.text)
    assert "".join(e.delta for e in events) == final.text

    engine.add_request("x", prompt, SamplingParams(max_tokens=50, temperature=0))
    engine.step()
    engine.abort("x")
    assert not engine.has_unfinished()
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_requests_that_can_never_fit_are_refused(tiny):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_tokens=64, block_size=16))
    with pytest.raises(CannotFitError, match="cache blocks"):
        engine.add_request(0, list(range(10, 60)), SamplingParams(max_tokens=100))
    with pytest.raises(CannotFitError, match="context length"):
        engine.add_request(1, [5] * 300, SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(2, [], SamplingParams())


def test_concurrent_streams_through_one_engine(tiny):
    from pyllm.engine.frontend import EngineFrontend

    model, tok = tiny
    prompts = _ids(tok)[:3]
    params = [SamplingParams(max_tokens=10, temperature=0, ignore_eos=True) for _ in prompts]
    want = _reference(model, tok, prompts, params)
    front = EngineFrontend(LLMEngine(model, tok, EngineConfig(kv_cache_tokens=1024)))
    streams = [front.stream(p, sp) for p, sp in zip(prompts, params)]
    texts = ["", "", ""]
    finals = [None, None, None]
    live = set(range(3))
    while live:  # round-robin: each consumer pulls one event at a time
        for i in sorted(live):
            try:
                ev = next(streams[i])
            except StopIteration:
                live.discard(i)
                continue
            texts[i] += ev.delta
            if ev.finished:
                finals[i] = ev.completion
    for i in range(3):
        assert finals[i].token_ids == want[(i, 0)]
        assert texts[i] == finals[i].text

    stream = front.stream(prompts[0], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    next(stream)
    stream.close()  # closing a stream aborts its request
    assert not front.engine.has_unfinished()
    assert front.engine.blocks.num_free_blocks == front.engine.num_blocks

    outs = front.run_all(prompts, params)
    assert [o[0].token_ids for o in outs] == [want[(i, 0)] for i in range(3)]


def _completions(model, tokenizer, prompts, params):
    engine = LLMEngine(model, tokenizer, EngineConfig(max_num_batched_tokens=32))
    out = {}
    for ev in engine.run((i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))):
        if ev.finished:
            out[ev.request] = (ev.completion.token_ids, ev.completion.text, ev.completion.logprobs)
    return out


def test_greedy_fast_path_changes_no_completion(tiny, monkeypatch):
    """Greedy batches take the sampler's fast path (argmax without the fused kernel, no unread
    log-probs); a batch with a request that wants log-probs takes the full path. Tokens, text and
    the requested log-probs are the same as with the fast path switched off."""
    import pyllm.sampler as sampler_mod

    model, tokenizer = tiny
    ids = _ids(tokenizer)
    params = [SamplingParams.greedy(max_tokens=12, ignore_eos=True)] * 4 + [
        SamplingParams.greedy(max_tokens=6, ignore_eos=True, logprobs=2)]
    calls = []
    real = sampler_mod._greedy
    monkeypatch.setattr(sampler_mod, "_greedy", lambda *a: calls.append(a[1:]) or real(*a))
    fast = _completions(model, tokenizer, ids, params)
    assert calls and all(a == (False,) for a in calls)  # the engine skips unread log-probs
    monkeypatch.setattr(sampler_mod, "_GREEDY_KERNEL", False)
    full = _completions(model, tokenizer, ids, params)
    assert fast == full
    assert fast[4][2] is not None and len(fast[4][2]) == 6 and fast[0][2] is None


def test_mark_computed_registers_a_block_once_its_twin_is_evicted():
    """mark_computed skips its pass while nothing can change, but not after an eviction: a block
    whose key another block held becomes the cached one when that block is reused."""
    from pyllm.engine.block_manager import BlockManager

    bm = BlockManager(5, 2)
    bm.allocate("a", [1, 2, 3])
    bm.allocate("b", [1, 2, 3])  # nothing computed yet: blocks of its own
    bm.mark_computed("a", 3)
    bm.mark_computed("b", 3)  # the same key as a's first block: not registered
    b_first = bm.block_table("b")[0]
    bm.free("a")
    bm.allocate("c", [7, 8, 9, 10, 11])  # takes a's blocks, dropping a's cached prefix
    bm.free("c")
    bm.mark_computed("b", 3)  # the same count as before, yet now b's block is registered
    assert bm.allocate("d", [1, 2, 5]) == 2 and bm.block_table("d")[0] == b_first


def test_decode_rows_tensor_is_reused_only_for_rows_0_to_n(tiny):
    model, tokenizer = tiny
    engine = LLMEngine(model, tokenizer, EngineConfig())
    a = engine._rows_tensor([0, 1, 2])
    assert a.tolist() == [0, 1, 2] and engine._rows_tensor([0, 1, 2]) is a
    assert engine._rows_tensor([1, 4]).tolist() == [1, 4]
    assert engine._rows_tensor([0, 5, 6]).tolist() == [0, 5, 6]
