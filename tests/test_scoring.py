"""pyllm.scoring: continuation log-likelihoods with the prompt prefilled once (shared blocks,
copy-on-write of the partial block) must equal scoring each full text on its own with a plain
full forward (LLM.score)."""

from __future__ import annotations

import random

import pytest

import pyllm
from pyllm.errors import ContextLengthError
from pyllm.scoring import ContinuationScorer, score_continuations


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pyllm.load(smollm2_path)


def reference(llm, prompt: list[int], cont: list[int]) -> list[float]:
    """Per-token log-probs of `cont` from one full forward over prompt + cont."""
    scored = llm.score(prompt + cont, top_n=0)[0]
    return [s.logprob for s in scored[len(prompt):]]


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, 40000) for _ in range(n)]


# 1e-4 nats, or 5e-5 relative for the very unlikely tokens of random ids (log-probs of -15 and
# below, where float32 sums computed in a different batch layout differ in the 6th digit).
TOL = {"abs": 1e-4, "rel": 5e-5}


def check(llm, prompt, conts, got) -> None:
    assert len(got) == len(conts)
    for cont, res in zip(conts, got):
        ref = reference(llm, prompt, cont)
        assert res.num_tokens == len(cont)
        assert res.token_logprobs == pytest.approx(ref, **TOL)
        assert res.logprob == pytest.approx(sum(ref), **TOL)
        assert res.mean == pytest.approx(sum(ref) / len(ref), **TOL)


@pytest.mark.parametrize("prompt_len", [1, 16, 21])  # one token, a whole block, a partial block
def test_one_prompt_many_continuations(llm, prompt_len):
    rng = random.Random(prompt_len)
    prompt = random_ids(rng, prompt_len)
    conts = [random_ids(rng, n) for n in (1, 3, 18)]  # the last crosses a block boundary
    check(llm, prompt, conts, score_continuations(llm.model, prompt, conts))


def test_text_continuations(llm):
    tok = llm.tokenizer
    prompt = tok.encode("The capital of France is", add_bos=False)
    conts = [tok.encode(s, add_bos=False) for s in (" Paris.", " Berlin.", " a city")]
    got = score_continuations(llm.model, prompt, conts)
    check(llm, prompt, conts, got)
    assert got[0].logprob > got[1].logprob  # the model knows this much


def test_shared_prefix_is_computed_once(llm):
    rng = random.Random(7)
    shared = random_ids(rng, 40)  # two full blocks and a bit that every prompt starts with
    reqs = [(shared + random_ids(rng, n), [random_ids(rng, m) for m in (1, 2, 5)])
            for n in (3, 9, 17)]
    scorer = ContinuationScorer(llm.model)
    got = scorer.score(reqs)
    for (prompt, conts), res in zip(reqs, got):
        check(llm, prompt, conts, res)
    # one batch: the two shared full blocks are prefilled once, then found by every prompt
    total = sum(len(p) for p, _ in reqs)
    assert scorer.stats["prompt_tokens"] == total
    assert scorer.stats["computed_prompt_tokens"] == total - 2 * 32
    again = scorer.score(reqs[:1])  # a later call finds them in the cache too
    assert scorer.stats["computed_prompt_tokens"] == total - 2 * 32 + len(reqs[0][0]) - 32
    assert [r.logprob for r in again[0]] == pytest.approx([r.logprob for r in got[0]], **TOL)


def test_many_batches_and_a_growing_cache(llm):
    rng = random.Random(11)
    reqs = [(random_ids(rng, n), [random_ids(rng, m) for m in (2, 7)]) for n in (30, 4, 50, 12)]
    scorer = ContinuationScorer(llm.model, cache_tokens=16, max_batch_tokens=48)
    got = scorer.score(reqs)
    assert scorer.num_blocks > 1
    for (prompt, conts), res in zip(reqs, got):
        check(llm, prompt, conts, res)


def test_refusals(llm):
    scorer = ContinuationScorer(llm.model)
    with pytest.raises(ValueError, match="empty"):
        scorer.score([([], [[5]])])
    with pytest.raises(ValueError, match="empty"):
        scorer.score([([5, 6], [[7], []])])
    with pytest.raises(ValueError, match="no continuations"):
        scorer.score([([5, 6], [])])
    limit = llm.context_length
    with pytest.raises(ContextLengthError):
        scorer.score([([5] * (limit - 1), [[7, 8]])])
