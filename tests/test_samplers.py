"""The sampler chain (pyllm.sampler) and the built-in sampler steps (plugins/pyllm_samplers): each
step against a plain-Python reference on hand-made distributions, chain parsing, the fused kernel
against the step-by-step path for the same chain, third-party steps, and the stateful steps
(mirostat v2, DRY, XTC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyllm import plugins
from pyllm.sampler import FUSED_ORDER, Sampler, _fusable, parse_chain
from pyllm.sampling_params import SamplingParams as SP
from pyllm.types import SamplingContext
from pyllm_samplers.steps import dry_penalties

NEG_INF = float("-inf")
STEPS = plugins.samplers()


def examples(n: int) -> settings:
    return settings(max_examples=min(n, settings.default.max_examples), deadline=None)


def ctx(params, prompts=None, outputs=None, state=None):
    B = len(params)
    return SamplingContext(params=params, prompt_ids=prompts or [[] for _ in range(B)],
                           output_ids=outputs or [[] for _ in range(B)],
                           state=state if state is not None else [{} for _ in range(B)])


def apply(step: str, logits, params, **kw):
    return STEPS[step](torch.tensor(logits, dtype=torch.float32).reshape(len(params), -1).clone(),
                       ctx(params, **kw))


def probs(logits_row) -> np.ndarray:
    z = np.asarray(logits_row, dtype=np.float64)
    kept = z > -np.inf
    out = np.zeros_like(z)
    out[kept] = np.exp(z[kept] - z[kept].max())
    return out / out.sum()


def keep(p: np.ndarray, ids) -> np.ndarray:
    out = np.zeros_like(p)
    out[list(ids)] = p[list(ids)]
    return out / out.sum()


P5 = [0.05, 0.4, 0.1, 0.3, 0.15]
L5 = [math.log(p) for p in P5]


# ------------------------------------------------------------------ each step vs a plain reference


def test_builtin_steps_are_registered():
    assert {"greedy", "temperature", "top_k", "top_p", "min_p", "typical_p", "penalties",
            "logit_bias", "mirostat_v2", "dry", "xtc"} <= set(STEPS)
    assert all(getattr(STEPS[n], "fusable", False) for n in FUSED_ORDER)


@pytest.mark.parametrize("step,params,expected", [
    # top_k=2 keeps the two most likely: ids 1 (0.4) and 3 (0.3)
    ("top_k", SP(top_k=2), keep(np.array(P5), [1, 3])),
    # top_p=0.75: 0.4 + 0.3 = 0.7 < 0.75, + 0.15 = 0.85 >= 0.75 -> ids 1, 3, 4
    ("top_p", SP(top_p=0.75), keep(np.array(P5), [1, 3, 4])),
    ("top_p", SP(top_p=0.69), keep(np.array(P5), [1, 3])),
    # min_p=0.3: p >= 0.3 * 0.4 = 0.12 -> ids 1, 3, 4
    ("min_p", SP(min_p=0.3), keep(np.array(P5), [1, 3, 4])),
    ("greedy", SP(), keep(np.array(P5), [1])),
    ("temperature", SP(temperature=0.0), keep(np.array(P5), [1])),
    ("temperature", SP(temperature=0.5), np.array(P5) ** 2 / (np.array(P5) ** 2).sum()),
    ("temperature", SP(temperature=2.0), np.sqrt(P5) / np.sqrt(P5).sum()),
])
def test_step_on_hand_made_distribution(step, params, expected):
    out = apply(step, L5, [params])
    np.testing.assert_allclose(probs(out[0].numpy()), expected, atol=1e-6)


def test_typical_p_reference():
    """Typical sampling by its definition: entropy H, then tokens by |-log p - H| ascending until
    the mass reaches typical_p."""
    p = np.array(P5)
    H = -(p * np.log(p)).sum()
    order = sorted(range(5), key=lambda i: (abs(-math.log(p[i]) - H), i))
    for typical in (0.3, 0.5, 0.8):
        kept, acc = [], 0.0
        for i in order:
            kept.append(i)
            acc += p[i]
            if acc >= typical:
                break
        out = apply("typical_p", L5, [SP(typical_p=typical)])
        np.testing.assert_allclose(probs(out[0].numpy()), keep(p, kept), atol=1e-6)


def test_penalties_reference():
    z = [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]
    p = SP(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, penalty_last_n=4)
    prompt, output = [5, 0, 0], [1, 0, 3]  # the last 4 tokens: 0, 1, 0, 3
    out = apply("penalties", z, [p], prompts=[prompt], outputs=[output])[0].tolist()
    counts = {0: 2, 1: 1, 3: 1}
    expected = []
    for t, v in enumerate(z):
        if t in counts:
            v = v / 2.0 if v > 0 else v * 2.0
            v -= counts[t] * 0.5 + 0.25
        expected.append(v)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # penalty_last_n = 0 turns them off; -1 looks at everything (token 5 from the prompt too)
    assert apply("penalties", z, [p.replace(penalty_last_n=0)], prompts=[prompt], outputs=[output])[0].tolist() == z
    whole = apply("penalties", z, [p.replace(penalty_last_n=-1)], prompts=[prompt], outputs=[output])[0]
    assert float(whole[5]) == pytest.approx(1.0 / 2.0 - 0.5 - 0.25)


def test_logit_bias_reference():
    out = apply("logit_bias", L5, [SP(logit_bias={1: -100.0, 2: 3.0, 4: NEG_INF})])[0]
    expected = list(L5)
    expected[1] -= 100.0
    expected[2] += 3.0
    expected[4] = NEG_INF
    assert out.tolist() == pytest.approx(expected)


def test_steps_leave_rows_alone_when_off():
    x = torch.randn(2, 50)
    p = [SP(), SP(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)]
    for name in ("top_k", "top_p", "min_p", "typical_p", "penalties", "logit_bias", "temperature",
                 "dry", "xtc"):
        assert torch.equal(STEPS[name](x.clone(), ctx(p)), x), name


# ------------------------------------------------------------------ mirostat v2, DRY, XTC


def test_mirostat_v2_truncates_by_surprise_and_updates_mu():
    p = SP(mirostat_tau=2.0, mirostat_eta=0.5)
    state = [{}]
    z = torch.tensor([L5])
    c = ctx([p], outputs=[[]], state=state)
    out = STEPS["mirostat_v2"](z.clone(), c)[0]
    # mu starts at 2 tau = 4 bits: keep p >= 2^-4 = 0.0625 -> drops id 0 (0.05)
    assert torch.isinf(out[0]) and torch.isfinite(out[1:]).all()
    # id 3 is drawn; its surprise under the renormalized truncation is -log2(0.3 / 0.95)
    c2 = ctx([p], outputs=[[3]], state=state)
    STEPS["mirostat_v2"](z.clone(), c2)
    surprise = -math.log2(0.3 / 0.95)
    assert state[0]["mirostat_v2"]["mu"] == pytest.approx(4.0 - 0.5 * (surprise - 2.0))


def test_dry_penalties_reference():
    # context: a b c d a b c | the last tokens "a b c" repeat "a b c" that was followed by d
    a, b_, c, d = 10, 11, 12, 13
    tokens = [a, b_, c, d, a, b_, c]
    pen = dry_penalties(tokens, frozenset(), multiplier=0.8, base=1.75, allowed_length=2)
    assert set(pen) == {d} and pen[d] == pytest.approx(0.8 * 1.75 ** (3 - 2))
    # a breaker inside the repeated span shortens the match to "c" (length 1 < 2): no penalty
    assert dry_penalties(tokens, frozenset({b_}), 0.8, 1.75, 2) == {}
    # a breaker as the last token disables DRY; shorter than allowed_length is free
    assert dry_penalties(tokens + [99], frozenset({99}), 0.8, 1.75, 2) == {}
    assert dry_penalties([a, d, a], frozenset(), 0.8, 1.75, 2) == {}
    # through the step: only token d loses logit
    x = torch.zeros(1, 20)
    out = STEPS["dry"](x.clone(), ctx([SP(dry_multiplier=0.8)], prompts=[tokens[:4]], outputs=[tokens[4:]]))
    assert out[0, d] == pytest.approx(-0.8 * 1.75) and (out[0, :d] == 0).all()


def test_xtc_removes_top_choices_but_the_least_likely_of_them():
    p = SP(xtc_probability=1.0, xtc_threshold=0.12, seed=1)
    out = apply("xtc", L5, [p])[0]
    # tokens with p >= 0.12: ids 1 (0.4), 3 (0.3), 4 (0.15); all but the least likely (4) go
    assert torch.isinf(out[1]) and torch.isinf(out[3])
    assert torch.isfinite(out[[0, 2, 4]]).all()
    # probability 0 or a threshold above 0.5 never removes anything
    assert torch.equal(apply("xtc", L5, [p.replace(xtc_threshold=0.6)]), torch.tensor([L5]))
    # the coin: with probability 0.5 about half of the positions apply it, reproducibly
    hits = [bool(torch.isinf(apply("xtc", L5, [p.replace(xtc_probability=0.5)], outputs=[[0] * k])[0]).any())
            for k in range(200)]
    again = [bool(torch.isinf(apply("xtc", L5, [p.replace(xtc_probability=0.5)], outputs=[[0] * k])[0]).any())
             for k in range(200)]
    assert hits == again and 60 < sum(hits) < 140


# ------------------------------------------------------------------ chains


def test_parse_chain_adds_implicit_steps():
    assert parse_chain(None, STEPS) == FUSED_ORDER
    assert parse_chain("penalties;top_k;top_p;min_p;temperature", STEPS) == (
        "penalties", "logit_bias", "top_k", "top_p", "min_p", "temperature")
    assert parse_chain("top_k, top-p", STEPS) == ("logit_bias", "top_k", "top_p", "temperature")
    assert parse_chain("temperature;top_k", STEPS) == ("logit_bias", "temperature", "top_k")


def test_unknown_step_is_named_with_the_registered_ones():
    with pytest.raises(ValueError) as err:
        parse_chain("top_k;tmperature", STEPS)
    text = str(err.value)
    assert "'tmperature'" in text and "did you mean 'temperature'" in text and "mirostat_v2" in text


@st.composite
def batch(draw):
    B = draw(st.integers(1, 5))
    V = draw(st.sampled_from([5, 64, 700]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, V, generator=gen) * draw(st.sampled_from([0.5, 2.0, 6.0]))
    params = [SP(temperature=draw(st.sampled_from([0.0, 0.7, 1.0, 1.5])),
                 top_k=draw(st.sampled_from([0, 3, 40])), top_p=draw(st.sampled_from([1.0, 0.9, 0.5])),
                 min_p=draw(st.sampled_from([0.0, 0.05])), typical_p=draw(st.sampled_from([1.0, 0.8])),
                 repetition_penalty=draw(st.sampled_from([1.0, 1.3])),
                 frequency_penalty=draw(st.sampled_from([0.0, 0.5])),
                 presence_penalty=draw(st.sampled_from([0.0, 0.4])),
                 logit_bias=draw(st.sampled_from([None, {0: 2.0, 1: NEG_INF}])),
                 seed=draw(st.integers(0, 2**64 - 1)), logprobs=draw(st.sampled_from([None, 0, 3])),
                 samplers=draw(st.sampled_from([None, "penalties;top_k;top_p;min_p;temperature",
                                                "top_p;temperature", "typical_p;min_p"])))
              for _ in range(B)]
    prompts = [torch.randint(0, V, (draw(st.integers(0, 12)),), generator=gen).tolist() for _ in range(B)]
    outputs = [torch.randint(0, V, (draw(st.integers(0, 6)),), generator=gen).tolist() for _ in range(B)]
    return x, params, prompts, outputs


@examples(40)
@given(batch())
def test_fused_equals_step_by_step(inputs):
    x, params, prompts, outputs = inputs
    fused = Sampler(STEPS).sample(x, params, prompts, outputs)
    steps = Sampler(STEPS, fused=False).sample(x, params, prompts, outputs)
    assert torch.equal(fused.token_ids, steps.token_ids)
    torch.testing.assert_close(fused.logprobs, steps.logprobs, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(fused.probs, steps.probs, atol=1e-6, rtol=0)
    assert (fused.top_ids is None) == (steps.top_ids is None)
    if fused.top_ids is not None:
        assert torch.equal(fused.top_ids, steps.top_ids)
        torch.testing.assert_close(fused.top_logprobs, steps.top_logprobs, atol=1e-5, rtol=1e-6)


@examples(40)
@given(batch())
def test_graph_rows_sample_what_the_sampler_samples(inputs):
    """Sampler.graph_params (the parameter rows a decode graph samples with) and the fused kernel
    give what Sampler.sample gives, step after step (the rows' constant part is cached in each
    row's state); None exactly when a row needs what the graph has no room for: top log-probs,
    a logit bias, a penalty window, a chain the kernel cannot run."""
    from pyllm.ops import sampling as sampling_ops

    x, params, prompts, outputs = inputs
    sampler, state, want_state = Sampler(STEPS), [{} for _ in params], [{} for _ in params]
    for step in range(2):
        outs = [o + [step] * step for o in outputs]
        rows = sampler.graph_params(params, prompts, outs, state)
        want = sampler.sample(x, params, prompts, outs, want_state)
        chains = [sampler.chain(p) for p in params]
        fits = [not p.logprobs and not (p.logit_bias and "logit_bias" in c)
                and not sampler._window(p, c, pr, o) and _fusable(c, STEPS)
                for p, c, pr, o in zip(params, chains, prompts, outs)]
        assert (rows is not None) == all(fits)
        if rows is None:
            continue
        B = len(params)
        empty_i = torch.empty(0, dtype=torch.int64)
        tok, lp, _, _, probs = sampling_ops.launch_sample_tokens(
            x, *rows, torch.empty(B, 0, dtype=torch.int64), empty_i, empty_i, torch.empty(0), 0)
        assert torch.equal(tok, want.token_ids)
        torch.testing.assert_close(lp, want.logprobs, atol=0, rtol=0)
        torch.testing.assert_close(probs, want.probs, atol=0, rtol=0)
    # a new params object for the same state (never done by the engine) is not served stale rows
    if rows is not None:
        greedy = [SP(temperature=0.0, seed=p.seed) for p in params]
        assert sampler.graph_params(greedy, prompts, outputs, state)[0][:, 0].eq(0).all()


def test_mixed_batch_keeps_rows_in_place():
    """Rows with a fused chain, a reordered chain and a plugin step, sampled together, give what
    each gives alone."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 300, generator=gen) * 2
    params = [SP(seed=1, top_k=20), SP(seed=2, samplers="temperature;top_p", top_p=0.8),
              SP(seed=3, samplers="dry;top_k", dry_multiplier=1.0, top_k=5), SP(seed=4, temperature=0.0)]
    prompts, outputs = [[1, 2, 3, 1, 2]] * 4, [[3, 1, 2]] * 4
    together = Sampler(STEPS).sample(x, params, prompts, outputs, [{} for _ in range(4)])
    for b in range(4):
        alone = Sampler(STEPS).sample(x[b:b + 1], params[b:b + 1], prompts[b:b + 1], outputs[b:b + 1])
        assert int(alone.token_ids[0]) == int(together.token_ids[b])


def test_third_party_step_runs_step_by_step():
    class OnlyEven:
        name = "only_even"

        def __init__(self):
            self.calls = 0

        def __call__(self, logits, context):
            self.calls += 1
            logits[:, 1::2] = NEG_INF
            return logits

    step = OnlyEven()

    class Plugin:
        @plugins.hookimpl
        def register_samplers(self, register):
            register("only_even", step)

    with plugins.registered(Plugin()):
        sampler = Sampler()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(3, 101, generator=gen)
        params = [SP(seed=s, samplers="top_k;only_even;temperature", top_k=30) for s in range(3)]
        tokens = set()
        for pos in range(30):
            r = sampler.sample(x, params, [[0] * pos] * 3, [[]] * 3)
            tokens |= set(r.token_ids.tolist())
        assert step.calls == 30 and all(t % 2 == 0 for t in tokens) and len(tokens) > 3


def test_unseeded_rows_get_a_seed_kept_in_state():
    x = torch.randn(2, 1000)
    state = [{}, {}]
    Sampler(STEPS).sample(x, [SP(), SP()], [[1], [1]], [[], []], state)
    assert all(isinstance(s["seed"], int) for s in state) and state[0]["seed"] != state[1]["seed"]
    again = Sampler(STEPS).sample(x, [SP(), SP()], [[1], [1]], [[], []], state)
    first = Sampler(STEPS).sample(x, [SP(seed=state[0]["seed"]), SP(seed=state[1]["seed"])], [[1], [1]], [[], []])
    assert torch.equal(again.token_ids, first.token_ids)


def test_sample_checks_row_counts():
    with pytest.raises(ValueError, match="rows"):
        Sampler(STEPS).sample(torch.randn(2, 10), [SP()], [[]], [[]])


def test_example_plugins_top_a_step_through_the_sampler(monkeypatch):
    """The third-party example plugin's top_a step (plugins/example_plugin), registered as a plugin
    and named in a chain, runs step by step: only tokens with p >= a * p_max^2 are drawn."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "plugins" / "example_plugin"))
    sys.modules.pop("pyllm_example", None)
    import pyllm_example

    with plugins.registered(pyllm_example):
        sampler = Sampler()
        x = torch.tensor([[3.0, 2.5, 2.0, 0.0, -1.0, 1.0]])
        p = torch.softmax(x[0].double(), 0)
        allowed = {i for i in range(6) if p[i] >= 0.2 * p.max() ** 2}
        assert 0 < len(allowed) < 6
        seen = set()
        for pos in range(200):
            r = sampler.sample(x, [SP(seed=5, samplers="top_a;temperature")], [[0] * pos], [[]])
            seen.add(int(r.token_ids[0]))
        assert seen == allowed


# ------------------------------------------------------------------ the greedy fast path

def _full_path(monkeypatch, sampler, *args):
    """Sampler.sample with the greedy fast path switched off (the fused kernel runs)."""
    import pyllm.sampler as sampler_mod

    with monkeypatch.context() as m:
        m.setattr(sampler_mod, "_GREEDY_KERNEL", False)
        return sampler.sample(*args)


def _same_result(a, b):
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(a.probs, b.probs)
    assert (a.top_ids is None) == (b.top_ids is None)
    if a.top_ids is not None:
        assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_logprobs, b.top_logprobs)


def test_greedy_fast_path_gives_the_fused_kernels_result_with_ties(monkeypatch):
    import pyllm.sampler as sampler_mod

    calls = []
    real = sampler_mod._greedy
    monkeypatch.setattr(sampler_mod, "_greedy", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(3)
    x = torch.round(torch.randn(6, 500, generator=gen) * 2)  # many ties
    x[0, [40, 9, 300]] = 20.0  # a three-way tie at the top: id 9 wins
    x[1, :] = NEG_INF
    x[1, [77, 12]] = -3.0
    x[2, :] = NEG_INF  # nothing to pick: token 0, prob 0
    x[3, 5] = float("nan")
    x[3, 6] = 50.0
    x[4, [100, 200]] = float("inf")
    params = [SP.greedy(), SP.greedy(top_k=3, top_p=0.5, min_p=0.3), SP.greedy(seed=5),
              SP.greedy(samplers="top_k;temperature"), SP.greedy(penalty_last_n=0, repetition_penalty=1.3),
              SP.greedy(presence_penalty=0.0)]
    prompts, outs = [[1, 2, 3]] * 6, [[9, 40]] * 6
    sampler = Sampler(STEPS)
    state = [{} for _ in params]
    fast = sampler.sample(x.clone(), params, prompts, outs, state)
    assert calls == [1]
    assert fast.token_ids.tolist()[:5] == [9, 12, 0, 6, 100] and fast.probs[2] == 0.0
    assert fast.top_ids is None and fast.top_logprobs is None
    assert all(isinstance(s["seed"], int) for s in state) and state[2]["seed"] == 5
    _same_result(fast, _full_path(monkeypatch, sampler, x.clone(), params, prompts, outs))


@pytest.mark.parametrize("other", [
    SP(temperature=0.7, seed=1),                      # not greedy
    SP.greedy(logprobs=0),                            # wants the chosen token's log-prob
    SP.greedy(logprobs=3),                            # wants alternatives
    SP.greedy(repetition_penalty=1.5),                # changes the logits before the argmax
    SP.greedy(frequency_penalty=1.0, penalty_last_n=-1),
    SP.greedy(logit_bias={5: 100.0}),
    SP.greedy(typical_p=0.5),                         # can remove the best token
    SP.greedy(samplers="temperature;top_k"),          # not the fused order: step by step
    SP.greedy(samplers="xtc;temperature"),
])
def test_greedy_fast_path_only_when_nothing_else_applies(monkeypatch, other):
    """One row that needs the full sampler sends the whole batch through it, and the greedy rows
    still get the same tokens."""
    import pyllm.sampler as sampler_mod

    calls = []
    real = sampler_mod._greedy
    monkeypatch.setattr(sampler_mod, "_greedy", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 300, generator=gen) * 3
    x[:, 5] = x[:, 7] = float(x.max()) + 0.5  # tied best tokens, and the banned/boosted id 5
    prompts, outs = [[5, 7, 5], [5, 7, 5]], [[7], [7]]
    sampler = Sampler(STEPS)
    mixed = sampler.sample(x.clone(), [SP.greedy(), other], prompts, outs)
    assert calls == []
    alone = sampler.sample(x[:1].clone(), [SP.greedy()], prompts[:1], outs[:1])
    assert calls == [1]
    assert int(mixed.token_ids[0]) == int(alone.token_ids[0]) == 5
    _same_result(mixed, _full_path(monkeypatch, sampler, x.clone(), [SP.greedy(), other], prompts, outs))


def test_greedy_fast_path_after_min_tokens_masking(monkeypatch):
    """generation.sample masks the ending ids before min_tokens; the fast path sees the masked
    logits and so never picks them."""
    from pyllm.generation import sample

    class Seq:
        def __init__(self, out):
            self.params = SP.greedy(min_tokens=2, max_tokens=5)
            self.prompt, self.out, self.state, self.stop_ids = [1], out, {}, frozenset({3})

    x = torch.zeros(2, 10)
    x[:, 3] = 5.0
    x[:, 8] = 1.0
    ids, _ = sample(x.clone(), [Seq([]), Seq([4, 4])], Sampler(STEPS))
    assert ids == [8, 3]


def test_skip_unrequested_logprobs_changes_only_the_unread_logprobs(monkeypatch):
    """A sampler made with skip_unrequested_logprobs (the engine's) returns NaN log-probs on the
    greedy fast path, and the same tokens and probs; rows that asked for log-probs get them."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 700, generator=gen) * 4
    args = ([[1, 2]] * 3, [[3]] * 3)
    skip, full = Sampler(STEPS, skip_unrequested_logprobs=True), Sampler(STEPS)
    a = skip.sample(x.clone(), [SP.greedy()] * 3, *args)
    b = full.sample(x.clone(), [SP.greedy()] * 3, *args)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.probs, b.probs)
    assert a.logprobs.isnan().all() and not b.logprobs.isnan().any()
    asked = [SP.greedy(), SP.greedy(logprobs=0), SP.greedy()]
    c = skip.sample(x.clone(), asked, *args)
    _same_result(c, full.sample(x.clone(), asked, *args))
    assert not c.logprobs.isnan().any()
