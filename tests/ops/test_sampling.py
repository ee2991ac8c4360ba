"""The fused sampler op `pyllm::sample_tokens`: the Philox stream, each filter on small hand-made
distributions against an independent float64 model of the rules, the kernel against
`sample_tokens_ref` over random inputs (hypothesis), chi-square on 20,000 seeded draws, greedy,
batch invariance of seeded draws, top-n log-probs, input checks and opcheck. CUDA cases skip
without a GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import pyllm.ops as ops
from pyllm import _C
from pyllm.ops.sampling import (FPARAMS, IPARAMS, philox4x32_10, philox_uniform, sample_tokens_ref)

HAS_CUDA = torch.cuda.is_available()
NEG_INF = float("-inf")

# Random123's published known-answer vectors for Philox4x32-10 (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def examples(n: int) -> settings:
    return settings(max_examples=min(n, settings.default.max_examples), deadline=None)


def params(B: int, *, temperature=1.0, top_p=1.0, min_p=0.0, typical_p=1.0, repetition=1.0,
           frequency=0.0, presence=0.0, top_k=0, seed=1234, positions=None):
    """fparams / iparams for B rows with the same settings; positions default to 0..B-1."""
    f = torch.tensor([[temperature, top_p, min_p, typical_p, repetition, frequency, presence]] * B,
                     dtype=torch.float32).reshape(B, 7)
    pos = list(range(B)) if positions is None else list(positions)
    i = torch.tensor([[top_k, seed, p] for p in pos], dtype=torch.int64).reshape(B, 3)
    return f, i


def run(logits, f, i, recent=None, bias=None, n=0, device="cpu"):
    B = logits.shape[0]
    recent = torch.empty(B, 0, dtype=torch.int64) if recent is None else recent
    rows, ids, vals = bias if bias is not None else ([], [], [])
    args = [logits, f, i, recent, torch.tensor(rows, dtype=torch.int64),
            torch.tensor(ids, dtype=torch.int64), torch.tensor(vals, dtype=torch.float32)]
    return ops.sample_tokens(*[a.to(device) for a in args], num_logprobs=n)


# ------------------------------------------------------------------ an independent model of the rules

def filtered_distribution(z, *, temperature=1.0, top_k=0, typical_p=1.0, top_p=1.0, min_p=0.0):
    """The distribution the draw uses, from the rules in pyllm/ops/sampling.py, in float64 numpy
    with plain loops (no torch): q[id] for every id."""
    z = np.asarray(z, dtype=np.float32)
    kept = [i for i in range(len(z)) if z[i] > -np.inf]
    rank = lambda ids: sorted(ids, key=lambda i: (-float(z[i]), i))  # noqa: E731

    def w_of(ids):
        m = max(float(z[i]) for i in ids)
        return {i: math.exp(float(z[i]) - m) for i in ids}

    def fewest(order, w, target):
        out, acc = [], 0.0
        for i in order:
            out.append(i)
            acc += w[i]
            if acc >= target:
                break
        return out

    if 0 < top_k < len(kept):
        kept = rank(kept)[:top_k]
    if typical_p < 1 and len(kept) > 1:
        w = w_of(kept)
        total = sum(w.values())
        m = max(float(z[i]) for i in kept)
        mean_d = sum(w[i] * (m - float(z[i])) for i in kept) / total
        score = {i: float(np.float32(abs((m - float(z[i])) - mean_d))) for i in kept}
        kept = fewest(sorted(kept, key=lambda i: (score[i], i)), w, typical_p * total)
    if top_p < 1 and len(kept) > 1:
        w = w_of(kept)
        kept = fewest(rank(kept), w, top_p * sum(w.values()))
    if min_p > 0 and len(kept) > 1:
        w = w_of(kept)
        kept = [i for i in kept if w[i] >= min_p]
    q = np.zeros(len(z))
    if temperature == 0:
        q[rank(kept)[0]] = 1.0
        return q
    y = {i: float(np.float32(z[i]) / np.float32(temperature)) for i in kept}
    my = max(y.values())
    for i in kept:
        q[i] = math.exp(y[i] - my)
    return q / q.sum()


# Small distributions chosen so that no cumulative mass lands on a filter's boundary.
HAND_MADE = [
    ("plain", [0.0, 1.0, 2.0, 0.5, -1.0, 1.5], {}),
    ("temperature", [0.0, 1.0, 2.0, 0.5, -1.0, 1.5], dict(temperature=0.6)),
    ("hot", [0.0, 1.0, 2.0, 0.5, -1.0, 1.5], dict(temperature=2.5)),
    ("top_k", [0.0, 1.0, 2.0, 0.5, -1.0, 1.5], dict(top_k=3)),
    ("top_k_ties", [1.0, 2.0, 1.0, 2.0, 1.0, 0.0], dict(top_k=3)),
    ("top_p", [math.log(p) for p in (0.05, 0.4, 0.1, 0.3, 0.15)], dict(top_p=0.75)),
    ("top_p_ties", [0.0, 0.0, 1.0, 0.0, -2.0, 0.0], dict(top_p=0.7)),
    ("min_p", [math.log(p) for p in (0.05, 0.4, 0.1, 0.3, 0.15)], dict(min_p=0.3)),
    ("typical_p", [math.log(p) for p in (0.05, 0.4, 0.1, 0.3, 0.15)], dict(typical_p=0.5)),
    ("typical_flat_peak", [3.0, 0.0, 0.1, 0.2, 0.3, -0.1, 0.05], dict(typical_p=0.6)),
    ("banned", [0.0, NEG_INF, 2.0, NEG_INF, 1.0], dict(top_p=0.9)),
    ("all", [math.log(p) for p in (0.05, 0.4, 0.1, 0.3, 0.1, 0.05)],
     dict(temperature=0.7, top_k=5, typical_p=0.97, top_p=0.92, min_p=0.1)),
]


# ------------------------------------------------------------------ Philox


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert philox4x32_10(counter, key) == expected
    assert tuple(_C.philox4x32_10(list(counter), list(key))) == expected


def test_philox_uniform_uses_seed_and_position_halves():
    seed, pos = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    w = _C.philox4x32_10([pos & 0xFFFFFFFF, pos >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])
    assert philox_uniform(seed, pos) == ((w[0] << 32 | w[1]) >> 11) / 2**53
    draws = [philox_uniform(7, p) for p in range(2000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert abs(np.mean(draws) - 0.5) < 0.03  # 2000 uniforms: sd of the mean ~0.0065
    assert philox_uniform(7, 5, 1) != philox_uniform(7, 5, 0)


def test_exp_matches_libm():
    rng = np.random.default_rng(0)
    xs = np.concatenate([-rng.exponential(5.0, 3000), -rng.uniform(0, 700, 1000), [0.0, -1e-300, -707.9]])
    rel = [abs(_C.sampling_exp_nonpos(float(x)) / math.exp(x) - 1.0) for x in xs]
    assert max(rel) < 5e-16
    assert _C.sampling_exp_nonpos(0.0) == 1.0
    assert _C.sampling_exp_nonpos(-800.0) == 0.0
    assert _C.sampling_exp_nonpos(NEG_INF) == 0.0


# ------------------------------------------------------------------ filters, probabilities, draws


@pytest.mark.parametrize("name,logits,settings_", HAND_MADE, ids=[h[0] for h in HAND_MADE])
def test_filters_on_hand_made_distributions(name, logits, settings_):
    """2,000 seeded draws: only tokens the rules keep are drawn, each with the probability the
    rules give (reported by the kernel, within 1e-6), and every kept token shows up."""
    q = filtered_distribution(logits, **settings_)
    B = 2000
    x = torch.tensor([logits] * B, dtype=torch.float32)
    f, i = params(B, **{k: v for k, v in settings_.items() if k != "top_k"},
                  top_k=settings_.get("top_k", 0), seed=99)
    tok, _, _, _, probs = run(x, f, i)
    assert set(tok.tolist()) == {j for j in range(len(q)) if q[j] > 0}
    np.testing.assert_allclose(probs.double().numpy(), q[tok.numpy()], atol=1e-6, rtol=0)
    ref = sample_tokens_ref(x[:300], f[:300], i[:300], torch.empty(300, 0, dtype=torch.int64),
                            *(torch.empty(0, dtype=t) for t in (torch.int64, torch.int64, torch.float32)), 0)
    assert torch.equal(ref[0], tok[:300])


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square with df degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("settings_", [dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.02),
                                       dict(typical_p=0.8), dict()])
def test_chi_square_20000_draws(settings_):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(12, generator=gen) * 1.5).tolist()
    q = filtered_distribution(logits, **settings_)
    B = 20000
    x = torch.tensor([logits] * B, dtype=torch.float32)
    f, i = params(B, **{k: v for k, v in settings_.items() if k != "top_k"},
                  top_k=settings_.get("top_k", 0), seed=2024)
    counts = np.bincount(run(x, f, i)[0].numpy(), minlength=len(q))
    kept = q > 0
    assert counts[~kept].sum() == 0
    expected = q[kept] * B
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_critical(int(kept.sum()) - 1)
    # the test has power: the unfiltered distribution is rejected when a filter removed mass
    if not kept.all():
        raw = filtered_distribution(logits, temperature=settings_.get("temperature", 1.0))
        chi_raw = float(((counts - raw * B) ** 2 / (raw * B)).sum())
        assert chi_raw > chi_square_critical(len(q) - 1)


def test_temperature_zero_is_greedy_with_ties_to_lowest_id():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 300, generator=gen)
    x[3, [10, 50, 200]] = 9.0  # a three-way tie at the top
    x[5] = torch.round(x[5])
    f, i = params(16, temperature=0.0, top_k=5, top_p=0.5, min_p=0.2)
    tok = run(x, f, i)[0]
    assert torch.equal(tok, x.argmax(dim=-1))  # torch.argmax returns the first maximum
    assert int(tok[3]) == 10
    # the greedy choice happens after penalties and bias
    recent = torch.full((16, 2), -1, dtype=torch.int64)
    recent[3, 0] = 10
    f2, _ = params(16, temperature=0.0, repetition=2.0)
    tok2 = run(x, f2, i, recent=recent, bias=([5], [7], [100.0]))[0]
    assert int(tok2[3]) == 50 and int(tok2[5]) == 7


def test_seeded_request_same_tokens_alone_and_in_a_batch():
    """One request (seed 1234) at 24 successive positions: alone, then as row 3 of 8 rows whose
    other rows have other seeds and settings, gives identical tokens."""
    gen = torch.Generator().manual_seed(1)
    V = 4000
    mine = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01, repetition=1.1)
    alone, batched = [], []
    for pos in range(100, 124):
        x = torch.randn(8, V, generator=gen) * 3
        recent = torch.randint(-1, V, (8, 16), generator=gen)
        f, i = params(1, **mine, seed=1234, positions=[pos])
        alone.append(int(run(x[3:4], f, i, recent=recent[3:4], bias=([0], [5], [2.0]))[0]))
        fb = torch.rand(8, 7, generator=gen) * 0.5 + 0.5
        ib = torch.stack([torch.randint(0, 30, (8,), generator=gen),
                          torch.randint(0, 2**62, (8,), generator=gen),
                          torch.randint(0, 500, (8,), generator=gen)], 1)
        fb[:, 5:] = 0.0
        fb[3], ib[3] = f[0], i[0]
        tok = run(x, fb, ib, recent=recent, bias=([0, 3, 6], [9, 5, 1], [1.0, 2.0, -3.0]))[0]
        batched.append(int(tok[3]))
    assert alone == batched
    assert len(set(alone)) > 5  # it really sampled


def test_top_n_logprobs_are_the_models():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 1000, generator=gen) * 2
    x[1, [3, 4, 5]] = 7.5  # ties inside the top-n: lower ids first
    f, i = params(4, temperature=0.7, top_k=3, repetition=1.3)
    recent = torch.randint(0, 1000, (4, 8), generator=gen)
    tok, lp, top_ids, top_lp, _ = run(x, f, i, recent=recent, bias=([2], [11], [50.0]), n=6)
    logp = torch.log_softmax(x.double(), dim=-1)
    torch.testing.assert_close(lp.double(), logp.gather(1, tok[:, None])[:, 0], atol=1e-6, rtol=0)
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :6]
    assert torch.equal(top_ids, order)
    assert top_ids[1, :3].tolist() == [3, 4, 5]
    torch.testing.assert_close(top_lp.double(), logp.gather(1, order), atol=1e-6, rtol=0)


def test_row_without_finite_logits_and_overflowing_temperature():
    x = torch.tensor([[NEG_INF] * 5, [1e30, 3e38, 2.0, -1.0, 0.0]], dtype=torch.float32)
    f, i = params(2, temperature=1e-30)
    tok, _, _, _, probs = run(x, f, i)
    assert tok.tolist() == [0, 1]  # nothing to draw -> 0; z / T overflows -> the argmax
    assert probs.tolist() == [0.0, 1.0]


def test_nonfinite_logits_still_give_tokens_in_range():
    """+inf and NaN logits have no specified outcome, but the kernel must stay in bounds."""
    gen = torch.Generator().manual_seed(8)
    for trial in range(40):
        V = int(torch.randint(1, 300, (1,), generator=gen))
        x = torch.randn(4, V, generator=gen) * 3
        r = torch.rand(4, V, generator=gen)
        x[r < 0.1] = float("inf")
        x[(r >= 0.1) & (r < 0.2)] = float("nan")
        x[(r >= 0.2) & (r < 0.3)] = NEG_INF
        f, i = params(4, temperature=[0.0, 0.7, 1.0][trial % 3], top_k=trial % 5, top_p=0.8,
                      typical_p=[1.0, 0.5][trial % 2], min_p=0.1)
        tok, _, top_ids, _, probs = run(x, f, i, n=min(V, 3))
        assert ((tok >= 0) & (tok < V)).all() and ((top_ids >= 0) & (top_ids < V)).all()
        assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_instruction_sets_agree(isa):
    if isa == "avx2" and _C.detected_isa() == "baseline":
        pytest.skip("this CPU has no AVX2")
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(6, 5000, generator=gen) * 4
    f, i = params(6, temperature=0.9, top_p=0.9, typical_p=0.95)
    before = _C.cpu_isa()
    try:
        _C.set_cpu_isa(isa)
        got = run(x, f, i, n=3)
    finally:
        _C.set_cpu_isa(before)
    ref = sample_tokens_ref(x, f, i, torch.empty(6, 0, dtype=torch.int64),
                            *(torch.empty(0, dtype=t) for t in (torch.int64, torch.int64, torch.float32)), 3)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])


# ------------------------------------------------------------------ kernel vs reference


@st.composite
def sampling_inputs(draw):
    B = draw(st.integers(1, 6))
    V = draw(st.one_of(st.integers(1, 40), st.sampled_from([257, 1000, 3001])))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    x = torch.randn(B, V, generator=gen) * scale
    if draw(st.booleans()):
        x = torch.round(x)  # many exact ties
    if draw(st.booleans()):
        x[torch.rand(B, V, generator=gen) < 0.2] = NEG_INF
    rows = []
    for _ in range(B):
        rows.append([
            draw(st.sampled_from([0.0, 0.3, 1.0, 1.6])),
            draw(st.sampled_from([1.0, 0.95, 0.6, 0.2])),
            draw(st.sampled_from([0.0, 0.05, 0.4])),
            draw(st.sampled_from([1.0, 0.9, 0.5])),
            draw(st.sampled_from([1.0, 1.2, 0.7])),
            draw(st.sampled_from([0.0, 0.4])),
            draw(st.sampled_from([0.0, -0.5, 0.3])),
        ])
    f = torch.tensor(rows, dtype=torch.float32)
    i = torch.tensor([[draw(st.sampled_from([0, 1, 2, 10, 50])), draw(st.integers(0, 2**63 - 1)),
                       draw(st.integers(0, 10**9))] for _ in range(B)], dtype=torch.int64)
    N = draw(st.sampled_from([0, 1, 7, 32]))
    recent = torch.randint(-1, V, (B, N), generator=gen)
    K = draw(st.integers(0, 4))
    bias = (torch.randint(0, B, (K,), generator=gen).tolist(), torch.randint(0, V, (K,), generator=gen).tolist(),
            (torch.randn(K, generator=gen) * 3).tolist())
    n = draw(st.integers(0, min(V, 5)))
    return x, f, i, recent, bias, n


@examples(60)
@given(sampling_inputs())
def test_kernel_matches_reference(inputs):
    x, f, i, recent, bias, n = inputs
    got = run(x, f, i, recent=recent, bias=bias, n=n)
    rows, ids, vals = bias
    ref = sample_tokens_ref(x, f, i, recent, torch.tensor(rows, dtype=torch.int64),
                            torch.tensor(ids, dtype=torch.int64), torch.tensor(vals, dtype=torch.float32), n)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-6, equal_nan=True)
    assert torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[3], ref[3], atol=1e-5, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(got[4], ref[4], atol=1e-6, rtol=0)


def random_mask(B: int, V: int, gen: torch.Generator, density: float) -> torch.Tensor:
    """int32 [B, ceil(V/32)] token bitmask with about `density` of the ids allowed (at least one
    per row, except where density is 0)."""
    allowed = torch.rand(B, V, generator=gen) < density
    if density > 0:
        allowed[torch.arange(B), torch.randint(0, V, (B,), generator=gen)] = True
    W = (V + 31) // 32
    padded = torch.zeros(B, W * 32, dtype=torch.int64)
    padded[:, :V] = allowed.to(torch.int64)
    words = (padded.reshape(B, W, 32) << torch.arange(32)).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # the int32 bit pattern
    if V % 32:  # bits past V are junk the kernels must ignore
        words[:, -1] |= torch.tensor(-(1 << (V % 32)) if V % 32 else 0, dtype=torch.int64)
    return words.to(torch.int32)


@examples(60)
@given(sampling_inputs(), st.sampled_from([0.0, 0.02, 0.3, 1.0]), st.integers(0, 2**31 - 1))
def test_token_mask_kernel_matches_reference(inputs, density, mask_seed):
    """The mask goes in before penalties and filters: kernel == reference, no masked token is ever
    drawn, and log-probs stay the unmasked model's."""
    x, f, i, recent, bias, n = inputs
    B, V = x.shape
    mask = random_mask(B, V, torch.Generator().manual_seed(mask_seed), density)
    rows, ids, vals = bias
    bias_t = (torch.tensor(rows, dtype=torch.int64), torch.tensor(ids, dtype=torch.int64),
              torch.tensor(vals, dtype=torch.float32))
    got = ops.sample_tokens(x, f, i, recent, *bias_t, num_logprobs=n, token_mask=mask)
    ref = sample_tokens_ref(x, f, i, recent, *bias_t, n, mask)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(got[4], ref[4], atol=1e-6, rtol=0)
    allowed = ops.sampling.token_mask_bits(mask, V)
    model_lp = torch.log_softmax(x.double(), -1).gather(1, got[0][:, None])[:, 0].float()
    torch.testing.assert_close(got[1], model_lp, atol=1e-5, rtol=1e-6, equal_nan=True)
    for b in range(B):
        finite = allowed[b] & (x[b] > NEG_INF)
        if bool(finite.any()):
            assert bool(allowed[b, got[0][b]]), (b, int(got[0][b]))


def test_token_mask_all_allowed_changes_nothing():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 100, generator=gen)
    f, i = params(4, temperature=0.9, top_p=0.9)
    full = torch.full((4, 4), -1, dtype=torch.int32)
    assert torch.equal(ops.sample_tokens(x, f, i, token_mask=full)[0], ops.sample_tokens(x, f, i)[0])


def test_token_mask_single_token_is_forced_through_every_filter():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 70, generator=gen)
    x[:, 65] = -30.0  # far outside top-k/top-p/min-p of the unmasked row
    f, i = params(3, temperature=0.7, top_k=2, top_p=0.5, min_p=0.3)
    mask = torch.zeros(3, 3, dtype=torch.int32)
    mask[:, 2] = 1 << 1  # only id 65
    assert ops.sample_tokens(x, f, i, token_mask=mask)[0].tolist() == [65, 65, 65]


@pytest.mark.parametrize("mask,message", [
    (torch.zeros(2, 2, dtype=torch.int32), "token_mask must be int32"),
    (torch.zeros(2, 1, dtype=torch.int64), "token_mask must be int32"),
    (torch.zeros(3, 1, dtype=torch.int32), "token_mask must be int32"),
])
def test_bad_token_masks_are_refused(mask, message):
    f, i = params(2)
    with pytest.raises(ValueError, match=message):
        ops.sample_tokens(torch.randn(2, 10), f, i, token_mask=mask)


def test_large_vocabulary_matches_reference():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 49152, generator=gen) * 3
    f = torch.tensor([[0.8, 0.95, 0.0, 1.0, 1.1, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
                      [0.7, 0.9, 0.05, 0.9, 1.0, 0.2, 0.1]], dtype=torch.float32)
    i = torch.tensor([[0, 5, 10], [0, 6, 11], [40, 7, 12]], dtype=torch.int64)
    recent = torch.randint(0, 49152, (3, 64), generator=gen)
    got = run(x, f, i, recent=recent, n=4)
    ref = sample_tokens_ref(x, f, i, recent, *(torch.empty(0, dtype=t) for t in (torch.int64, torch.int64, torch.float32)), 4)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ the op boundary


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=gen)
    f, i = params(3, temperature=0.8, top_p=0.9)
    args = (x, f, i, torch.randint(-1, 64, (3, 4), generator=gen), torch.tensor([1]), torch.tensor([2]),
            torch.tensor([0.5]), 2)
    opcheck(torch.ops.pyllm.sample_tokens.default, args)


@pytest.mark.parametrize("change,message", [
    (dict(logits=torch.randn(2, 10, dtype=torch.float64)), "logits must be float32"),
    (dict(fparams=torch.ones(2, 6)), "fparams must be float32"),
    (dict(iparams=torch.zeros(2, 3, dtype=torch.int32)), "iparams must be int64"),
    (dict(recent=torch.zeros(3, 2, dtype=torch.int64)), "recent_ids must be int64"),
    (dict(recent=torch.full((2, 2), 10, dtype=torch.int64)), "recent_ids must hold token ids"),
    (dict(bias=(torch.tensor([2]), torch.tensor([0]), torch.tensor([1.0]))), "bias_rows must be in"),
    (dict(bias=(torch.tensor([0]), torch.tensor([10]), torch.tensor([1.0]))), "bias_ids must be in"),
    (dict(bias=(torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([1.0]))), "one length"),
    (dict(n=11), "num_logprobs"),
    (dict(f_col=(0, -1.0)), "temperature"),
    (dict(f_col=(1, 0.0)), "top_p"),
    (dict(f_col=(2, 1.5)), "min_p"),
    (dict(f_col=(3, 0.0)), "typical_p"),
    (dict(f_col=(4, 0.0)), "repetition_penalty"),
    (dict(i_col=(0, -1)), "top_k"),
    (dict(i_col=(2, -5)), "position"),
])
def test_bad_inputs_are_refused(change, message):
    x = change.get("logits", torch.randn(2, 10))
    f, i = params(2)
    f = change.get("fparams", f)
    i = change.get("iparams", i)
    if "f_col" in change:
        f[0, change["f_col"][0]] = change["f_col"][1]
    if "i_col" in change:
        i[1, change["i_col"][0]] = change["i_col"][1]
    recent = change.get("recent", torch.full((2, 2), -1, dtype=torch.int64))
    rows, ids, vals = change.get("bias", (torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5])))
    with pytest.raises(ValueError, match=message):
        ops.sample_tokens(x, f, i, recent, rows, ids, vals, change.get("n", 1))


def test_column_names_match_the_kernel_layout():
    assert FPARAMS == ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty",
                       "frequency_penalty", "presence_penalty")
    assert IPARAMS == ("top_k", "seed", "position")


# ------------------------------------------------------------------ the greedy helper

def greedy(x):
    """pyllm._C.greedy_tokens_cpu (the sampler's greedy fast path) on float32 rows."""
    from pyllm.ops._library import view

    x = x.contiguous()
    B = x.shape[0]
    tok, lp, pr = (torch.empty(B, dtype=torch.int64), torch.empty(B, dtype=torch.float32),
                   torch.empty(B, dtype=torch.float32))
    _C.greedy_tokens_cpu(view(x), view(tok), view(lp), view(pr))
    return tok, lp, pr


@st.composite
def greedy_rows(draw):
    B = draw(st.integers(1, 5))
    V = draw(st.one_of(st.integers(1, 200), st.sampled_from([63, 64, 65, 1000, 49152])))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, V, generator=gen) * draw(st.sampled_from([0.01, 1.0, 30.0]))
    if draw(st.booleans()):
        x = torch.round(x)  # many exact ties, -0.0 next to 0.0 included
    special = draw(st.sampled_from(["none", "-inf", "+inf", "nan", "all -inf", "mixed"]))
    r = torch.rand(B, V, generator=gen)
    if special in ("-inf", "mixed"):
        x[r < 0.3] = NEG_INF
    if special in ("+inf", "mixed"):
        x[(r >= 0.3) & (r < 0.32)] = float("inf")
    if special in ("nan", "mixed"):
        x[(r >= 0.32) & (r < 0.35)] = float("nan") if draw(st.booleans()) else -float("nan")
    if special == "all -inf":
        x[0] = NEG_INF
    return x


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
@examples(80)
@given(x=greedy_rows())
def test_greedy_helper_is_argmax_and_matches_the_fused_kernel(isa, x):
    """The greedy helper returns torch.argmax (the first maximum) on rows without NaN, and
    exactly what sample_tokens returns at temperature 0 on every row: tokens, log-probs bit for
    bit, probs (0 for a row with nothing finite or +inf)."""
    if isa == "avx2" and _C.detected_isa() == "baseline":
        pytest.skip("this CPU has no AVX2")
    before = _C.cpu_isa()
    try:
        _C.set_cpu_isa(isa)
        tok, lp, pr = greedy(x)
        full = run(x, *params(x.shape[0], temperature=0.0))
    finally:
        _C.set_cpu_isa(before)
    assert torch.equal(tok, full[0])
    torch.testing.assert_close(lp, full[1], atol=0, rtol=0, equal_nan=True)
    assert torch.equal(pr, full[4])
    clean = ~x.isnan().any(dim=1) & (x > NEG_INF).any(dim=1)
    assert torch.equal(tok[clean], x[clean].argmax(dim=1))


def test_greedy_helper_ties_go_to_the_lowest_id():
    x = torch.zeros(4, 300)
    x[0, [7, 70, 299]] = 5.0
    x[1, 250] = 1.0
    x[1, 3] = 1.0
    x[2] = -0.0
    x[2, 5] = 0.0  # -0 == +0: the first one wins
    x[3, :] = NEG_INF
    x[3, 128] = -1.0
    x[3, 200] = -1.0
    tok, _, pr = greedy(x)
    assert tok.tolist() == [7, 3, 0, 128] and pr.tolist() == [1.0] * 4


def test_greedy_pointer_entry_without_logprobs():
    """greedy_tokens_ptr: the same tokens and probs; with_logprobs=False writes NaN log-probs."""
    gen = torch.Generator().manual_seed(12)
    x = torch.round(torch.randn(5, 3001, generator=gen) * 3)
    x[4] = NEG_INF
    want = greedy(x)
    for with_lp in (True, False):
        tok, lp, pr = torch.empty(5, dtype=torch.int64), torch.empty(5), torch.empty(5)
        _C.greedy_tokens_ptr(x.data_ptr(), 5, 3001, tok.data_ptr(), lp.data_ptr(), pr.data_ptr(),
                             with_lp)
        assert torch.equal(tok, want[0]) and torch.equal(pr, want[2])
        if with_lp:  # (row 4 has nothing finite: its log-prob is NaN either way)
            torch.testing.assert_close(lp, want[1], atol=0, rtol=0, equal_nan=True)
        else:
            assert lp.isnan().all()


def test_empty_batch():
    out = run(torch.empty(0, 10), *params(0), n=2)
    assert out[0].shape == (0,) and out[2].shape == (0, 2)


# ------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@examples(30)
@given(sampling_inputs())
def test_cuda_kernel_matches_cpu(inputs):
    x, f, i, recent, bias, n = inputs
    cpu = run(x, f, i, recent=recent, bias=bias, n=n)
    gpu = run(x, f, i, recent=recent, bias=bias, n=n, device="cuda")
    assert torch.equal(cpu[0], gpu[0].cpu())
    assert torch.equal(cpu[2], gpu[2].cpu())
    for c, g in zip((cpu[1], cpu[3], cpu[4]), (gpu[1], gpu[3], gpu[4])):
        torch.testing.assert_close(c, g.cpu(), atol=1e-5, rtol=1e-6, equal_nan=True)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_large_vocabulary_matches_cpu():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 49152, generator=gen) * 3
    f, i = params(64, temperature=0.8, top_k=40, top_p=0.95, min_p=0.02, typical_p=0.97, repetition=1.1)
    recent = torch.randint(0, 49152, (64, 64), generator=gen)
    cpu = run(x, f, i, recent=recent, n=5)
    gpu = run(x, f, i, recent=recent, n=5, device="cuda")
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[2], gpu[2].cpu())
