"""The engine's front door from several threads and asyncio tasks at once.

Expected results come from the same model used serially (one call at a time), so a test fails
on any interference between concurrent callers: greedy decoding is deterministic and a
sequence's tokens do not depend on what else shares its batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tiny_chat import write_tiny_chat_model

import pyllm
from pyllm import SamplingParams

PROMPTS = ["The cat sat on", "Numbers: 1, 2, 3,", "Once upon a time", "def main():",
           "Paris is the capital of", "A B C D", "The weather today", "import torch\n"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_path):
    path = write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model.gguf", smollm2_path)
    return pyllm.load(path, progress=False)


def greedy(n: int = 12) -> SamplingParams:
    return SamplingParams.greedy(max_tokens=n, ignore_eos=True)


def idle(llm) -> bool:
    """No request left in the engine and every KV block back in the free list."""
    with llm.engine.exclusive() as engine:
        return not engine.has_unfinished() and engine.blocks.num_free_blocks == engine.num_blocks


def _run_threads(llm, calls, threads=8):
    """Run `calls` (prompt index, "generate" | "stream") on `threads` threads, all at once."""
    start = threading.Barrier(threads)

    def work(chunk):
        start.wait()
        out = []
        for i, how in chunk:
            if how == "generate":
                out.append((i, llm.generate(PROMPTS[i], greedy())[0].text))
            else:
                out.append((i, "".join(llm.stream(PROMPTS[i], greedy()))))
        return out

    chunks = [calls[t::threads] for t in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [r for f in [pool.submit(work, c) for c in chunks] for r in f.result()]


def test_eight_threads_get_the_serial_results(tiny):
    serial = [r.text for r in [tiny.generate(p, greedy())[0] for p in PROMPTS]]
    calls = [(i % len(PROMPTS), "generate" if i % 3 else "stream") for i in range(64)]
    got = _run_threads(tiny, calls)
    assert len(got) == len(calls)
    assert all(text == serial[i] for i, text in got)
    assert idle(tiny)


def test_score_and_embed_alongside_generation(tiny):
    want_score = tiny.score(PROMPTS[0], top_n=2)
    want_embed = tiny.embed(PROMPTS[1])
    want_text = tiny.generate(PROMPTS[2], greedy(30))[0].text
    with ThreadPoolExecutor(6) as pool:
        gens = [pool.submit(lambda: tiny.generate(PROMPTS[2], greedy(30))[0].text)
                for _ in range(3)]
        scores = [pool.submit(tiny.score, PROMPTS[0], 2) for _ in range(2)]
        embeds = [pool.submit(tiny.embed, PROMPTS[1]) for _ in range(2)]
        assert all(f.result() == want_text for f in gens)
        assert all(f.result() == want_score for f in scores)
        assert all(f.result() == want_embed for f in embeds)


def test_abandoned_stream_frees_its_blocks(tiny):
    assert idle(tiny)
    stream = tiny.stream(PROMPTS[3] * 8, greedy(200))
    assert next(stream)
    assert not idle(tiny)
    stream.close()
    assert idle(tiny)

    def abandon():  # a thread that stops reading and drops its stream
        s = tiny.stream(PROMPTS[4] * 8, greedy(200))
        next(s)
        del s

    t = threading.Thread(target=abandon)
    t.start()
    t.join()
    deadline = time.monotonic() + 5
    while not idle(tiny) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert idle(tiny)


def test_asyncio_tasks_share_the_engine(tiny):
    serial = [tiny.generate(p, greedy())[0] for p in PROMPTS[:4]]
    ids = [r.prompt_token_ids for r in serial]
    front = tiny.engine

    async def one(i):
        text = ""
        async for ev in front.astream(ids[i], greedy()):
            text += ev.delta
        return text

    async def cancelled():
        task = asyncio.ensure_future(one_slow())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def one_slow():
        async for _ in front.astream(ids[0] * 8, greedy(400)):
            pass

    async def main():
        texts = await asyncio.gather(*[one(i % 4) for i in range(12)])
        await cancelled()
        return texts

    texts = asyncio.run(main())
    assert texts == [serial[i % 4].text for i in range(12)]
    deadline = time.monotonic() + 5
    while not idle(tiny) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert idle(tiny)


def test_a_failing_step_reaches_every_caller_and_the_engine_recovers(tiny, monkeypatch):
    engine = tiny.engine.engine
    real = engine.step
    failed = threading.Event()

    def step():
        if not failed.is_set():
            failed.set()
            raise RuntimeError("simulated kernel failure")
        return real()

    monkeypatch.setattr(engine, "step", step)
    with pytest.raises(RuntimeError, match="simulated kernel failure"):
        tiny.generate(PROMPTS[:3], greedy())
    assert idle(tiny)
    assert tiny.generate(PROMPTS[0], greedy())[0].text == \
        tiny.generate(PROMPTS[0], greedy())[0].text


def test_default_model_from_threads(smollm2_path):
    llm = pyllm.load(smollm2_path, progress=False)
    prompts = [[{"role": "user", "content": q}] for q in
               ("What is 2+2?", "Name a colour.", "Say hi.", "What is the capital of France?")]
    params = SamplingParams.greedy(max_tokens=8)
    serial = [llm.generate([p], params)[0].token_ids for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lambda i=i: llm.chat(prompts[i % 4], params).token_ids)
                   for i in range(8)]
        assert [f.result() for f in futures] == [serial[i % 4] for i in range(8)]


def test_a_bad_sampler_chain_is_refused_before_it_reaches_the_batch(tiny):
    stream = tiny.stream(PROMPTS[0] * 4, greedy(60))
    first = next(stream)
    with pytest.raises(ValueError, match="unknown sampler step 'bogus'"):
        tiny.generate(PROMPTS[1], SamplingParams(max_tokens=3, samplers="bogus;temperature"))
    rest = "".join(stream)  # the running request was not failed with it
    assert first + rest == tiny.generate(PROMPTS[0] * 4, greedy(60))[0].text


def test_the_waiting_bound_refuses_streams_not_a_batch(tiny):
    from pyllm.engine.frontend import QueueFullError

    front = tiny.engine
    want = [r.text for r in tiny.generate(PROMPTS, greedy(4))]
    ids = [tiny.encode_prompt(p) for p in PROMPTS[:3]]
    front.max_waiting = 2
    try:
        with front.exclusive(), ThreadPoolExecutor(1) as other:
            # nothing is admitted meanwhile: another thread's submissions pile up
            rids = [other.submit(front.submit, i, greedy(4)).result() for i in ids[:2]]
            with pytest.raises(QueueFullError, match="the limit is 2"):
                other.submit(front.submit, ids[2], greedy(4)).result()
        front.abort(*rids)
        assert [r.text for r in tiny.generate(PROMPTS, greedy(4))] == want  # 8 > 2, one batch
    finally:
        front.max_waiting = None
    assert idle(tiny)


def test_waiting_for_the_engine_while_holding_it_still_is_refused(tiny):
    with tiny.exclusive():
        with pytest.raises(RuntimeError, match="holds the engine still"):
            tiny.generate(PROMPTS[0], greedy(2))
        with pytest.raises(RuntimeError, match="holds the engine still"):
            tiny.score(PROMPTS[0])
    assert tiny.generate(PROMPTS[0], greedy(2))[0].token_ids
