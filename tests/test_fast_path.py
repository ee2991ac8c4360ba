"""The fast CPU forward (pyllm/model/fast.py, csrc/runner/) against the op-by-op forward.

The runner calls the same kernels in the same order on the same numbers, so on every model
family it must give the op-by-op path's logits, hidden states and KV-cache contents exactly:
prefill, decode through the cache, and flattened batches mixing both, over random batch layouts
(hypothesis), float32 and half-precision caches. Bad metadata must be refused before anything
is written. On SmolLM2, with the kernels' default threads, the logits agree to 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyllm.ops import _library as L
from pyllm.model.batch import allocate_kv_caches, build_metadata
from pyllm.model.fast import FastForward, available
from pyllm.model.loader import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_random_llama as M  # noqa: E402

# The Hugging Face families are built with transformers (random weights from its configs); the
# llama.cpp-shaped random Llama of scripts/make_random_llama.py needs nothing else, so the suite
# runs without transformers too, on that model.
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
if HAVE_TRANSFORMERS:
    import test_model_parity as parity
    import transformers

pytestmark = pytest.mark.skipif(not available(), reason="needs the native kernels (pyllm._C.Runner)")

VOCAB = 160  # every model here (test_model_parity.VOCAB)
RANDOM_SHAPE = dict(M.SHAPES["tiny"], vocab=VOCAB)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> LoadedModel: every Hugging Face family of the parity tests, and the two GGUF
    layouts (llama.cpp-permuted Q/K with mixed block formats -> a ConcatLinear QKV; Qwen2 with
    biases, f16 and q8_0 matrices), and scripts/make_random_llama.py's tiny Llama."""
    path = tmp_path_factory.mktemp("random-llama") / "tiny.gguf"
    M.write_random_llama(path, RANDOM_SHAPE, seed=3)
    out = {"random-llama": load_model(path)}
    if not HAVE_TRANSFORMERS:
        return out
    for case in parity.CASES:
        folder = tmp_path_factory.mktemp(case)
        parity._make(case, folder)
        out[case] = load_model(folder)
    for case, (hf_case, arch, qtypes) in parity.GGUF_CASES.items():
        cfg = parity.CASES[hf_case]()
        if case == "qwen2":
            cfg.tie_word_embeddings = False
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        parity._randomize(hf, seed=7)
        path = tmp_path_factory.mktemp(f"gguf-{case}") / "tiny.gguf"
        parity._write_gguf(hf, path, arch, qtypes)
        out[f"gguf-{case}"] = load_model(path)
    return out


HF_CASES = ["gpt2", "llama-gqa", "llama-mqa-llama3", "llama-linear", "qwen2", "qwen3", "gemma3",
            "phi3", "mistral-window", "gguf-llama", "gguf-qwen2", "gguf-qwen3", "gguf-phi3",
            "gguf-gemma3"]
if HAVE_TRANSFORMERS:
    assert HF_CASES == list(parity.CASES) + [f"gguf-{c}" for c in parity.GGUF_CASES]


def cases(*names: str) -> list:
    """Parameters for `names`; those built with transformers are skipped without it."""
    needs = pytest.mark.skipif(not HAVE_TRANSFORMERS,
                               reason="this family's random model is built with transformers")
    return [pytest.param(n, marks=needs) if n in HF_CASES else n for n in names]


# The fused runner refuses these (QK-norm; tests/test_family_engine.py checks the warning).
OP_BY_OP = {"qwen3", "gemma3", "gguf-qwen3", "gguf-gemma3"}
ALL = cases("random-llama", *(c for c in HF_CASES if c not in OP_BY_OP))


def _caches(cfg, num_blocks: int, block_size: int, dtype=torch.float32):
    """Zeroed caches, so whole pools can be compared after a run."""
    caches = allocate_kv_caches(cfg.n_layer, num_blocks, block_size, cfg.n_kv_head, cfg.head_dim,
                                dtype)
    for k, v in caches:
        k.zero_()
        v.zero_()
    return caches


def _run(model, fast: bool, steps, caches, *, hidden: bool = False):
    """Run `steps` [(ids, meta, logits_at)] through one path; returns every step's output."""
    model.fast_path = fast
    outs = []
    try:
        with torch.inference_mode():
            for ids, meta, rows in steps:
                if hidden:
                    outs.append(model.hidden_states(ids, meta, caches))
                else:
                    outs.append(model(ids, meta, caches, rows))
    finally:
        model.fast_path = True
    return outs


@contextmanager
def _one_thread():
    """The kernels on one thread: a multi-threaded qlinear may change its split from call to
    call (its stall guard), which reorders float sums; on one thread both paths make exactly
    the same kernel calls, so their results must be identical bit for bit."""
    n = L._C.get_num_threads()
    L._C.set_num_threads(1)
    try:
        yield
    finally:
        L._C.set_num_threads(n)


def _compare(model, steps_fn, num_blocks: int, block_size: int, dtype=torch.float32,
             hidden: bool = False):
    """Both paths on fresh caches: outputs and caches must be identical."""
    cfg = model.config
    results = []
    for fast in (False, True):
        caches = _caches(cfg, num_blocks, block_size, dtype)
        with _one_thread():
            results.append((_run(model, fast, steps_fn(), caches, hidden=hidden), caches))
    (ref, ref_caches), (got, got_caches) = results
    assert isinstance(model._fast, FastForward), "the fast path was not used"
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()
    for (k0, v0), (k1, v1) in zip(ref_caches, got_caches):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", ALL)
def test_prefill_then_decode_equals_op_by_op(models, case):
    model = models[case].model
    ids = _ids(19, seed=3)
    table = [[5, 0, 3, 7, 2, 6]]  # scattered blocks of 4

    def steps():
        out = [(ids[:11], build_metadata([0], [11], table, 4), None)]  # every row's logits
        for t in range(11, 19):
            out.append((ids[t:t + 1], build_metadata([t], [1], table, 4), None))
        return out

    _compare(model, steps, num_blocks=8, block_size=4)


@pytest.mark.parametrize("case", ALL)
def test_mixed_batch_equals_op_by_op(models, case):
    """One step holding a decode, a prefill chunk after a cached prefix, and a fresh prompt,
    with logits at each sequence's last row; then hidden states of the same kind of step."""
    model = models[case].model
    tables = [[3, 8], [0, 5, 1], [6, 2]]

    def steps():
        first = build_metadata([0, 0], [6, 4], tables[:2], 4)
        mixed = build_metadata([6, 4, 0], [1, 5, 3], tables, 4)
        return [(_ids(10, seed=5), first, first.last_token_rows()),
                (_ids(9, seed=6), mixed, mixed.last_token_rows())]

    _compare(model, steps, num_blocks=10, block_size=4)
    _compare(model, steps, num_blocks=10, block_size=4, hidden=True)


@pytest.mark.parametrize("case", cases("random-llama", "gguf-llama", "gpt2", "mistral-window"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cache_equals_op_by_op(models, case, dtype):
    model = models[case].model
    ids = _ids(12, seed=8)

    def steps():
        meta = build_metadata([0], [9], [[1, 3, 0]], 4)
        out = [(ids[:9], meta, meta.last_token_rows())]
        for t in range(9, 12):
            out.append((ids[t:t + 1], build_metadata([t], [1], [[1, 3, 0]], 4), None))
        return out

    _compare(model, steps, num_blocks=4, block_size=4, dtype=dtype)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_batches_equal_op_by_op(models, data):
    """Random batch layouts: 1-4 sequences, each with a cached prefix written by an earlier step
    and 1-9 new tokens, blocks of 1-8 slots scattered through the pool, logits at random rows."""
    case = data.draw(st.sampled_from(["random-llama", "gguf-llama", "gpt2", "qwen2",
                                      "mistral-window"] if HAVE_TRANSFORMERS else ["random-llama"]))
    model = models[case].model
    block = data.draw(st.sampled_from([1, 2, 4, 8]))
    B = data.draw(st.integers(1, 4))
    cached = [data.draw(st.integers(0, 12)) for _ in range(B)]
    new = [data.draw(st.integers(1, 9)) for _ in range(B)]
    need = [-(-(c + n) // block) for c, n in zip(cached, new)]
    perm = data.draw(st.permutations(range(sum(need))))
    tables, at = [], 0
    for n in need:
        tables.append(list(perm[at:at + n]))
        at += n
    T = sum(new)
    rows = data.draw(st.lists(st.integers(0, T - 1), min_size=1, max_size=4))
    seed = data.draw(st.integers(0, 1000))
    prefix = [(c, t) for c, t in zip(cached, tables) if c]

    def steps():
        out = []
        if prefix:  # write the cached prefixes first
            meta = build_metadata([0] * len(prefix), [c for c, _ in prefix], [t for _, t in prefix],
                                  block)
            out.append((_ids(sum(c for c, _ in prefix), seed), meta, None))
        meta = build_metadata(cached, new, tables, block)
        out.append((_ids(T, seed + 1), meta, torch.tensor(rows)))
        return out

    _compare(model, steps, num_blocks=sum(need), block_size=block)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", ["token", "position", "block", "slot", "row"])
def test_bad_metadata_is_refused_before_anything_is_written(models, bad):
    model = models["random-llama"].model
    cfg = model.config
    caches = _caches(cfg, num_blocks=4, block_size=4)
    meta = build_metadata([0], [5], [[2, 1]], 4)
    ids = _ids(5, seed=9)
    rows = None
    if bad == "token":
        ids[3] = VOCAB
        match = "token ids must lie in"
    elif bad == "position":
        meta.positions[4] = cfg.max_position
        match = "positions must lie in"
    elif bad == "block":
        meta.block_tables[0, 1] = 4
        match = "block_tables holds an entry outside"
    elif bad == "slot":
        meta.slot_mapping[0] = 16
        match = "slot_mapping holds slot 16"
    else:
        rows = torch.tensor([5])
        match = "row"
    with torch.inference_mode(), pytest.raises((ValueError, IndexError), match=match):
        model(ids, meta, caches, rows)
    assert isinstance(model._fast, FastForward)
    assert all(not k.any() and not v.any() for k, v in caches)


def test_moving_the_model_drops_the_runner(models):
    model = models["random-llama"].model
    caches = _caches(model.config, 4, 4)
    with torch.inference_mode():
        model(_ids(3, 1), build_metadata([0], [3], [[0]], 4), caches)
    assert isinstance(model._fast, FastForward)
    model.to("cpu")
    assert model._fast is None


def test_replacing_the_gpts_tensors_rebuilds_the_runner(models):
    """The GPT moved or cast by itself (not through ModelRunner.to): the next step notices the
    new tensors and builds a fast forward on them instead of reading the old ones."""
    model = models["random-llama"].model
    caches = _caches(model.config, 4, 4)
    step = (_ids(3, 1), build_metadata([0], [3], [[0]], 4), caches)
    with torch.inference_mode():
        model(*step)
        first = model._fast
        norm = model.gpt.norm_f
        old = norm.weight
        norm.weight = old.clone()  # a buffer with the same values at a new address
        try:
            model(*step)
            assert isinstance(model._fast, FastForward) and model._fast is not first
        finally:
            norm.weight = old


# ---------------------------------------------------------------------- SmolLM2


def test_smollm2_fast_path_matches_op_by_op(smollm2_path):
    loaded = load_model(smollm2_path)
    model, cfg = loaded.model, loaded.config
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    table = [list(range(5, -1, -1))]  # 6 blocks of 16, reversed

    def steps():
        meta = build_metadata([0], [32], table, 16)
        out = [(ids[:32], meta, meta.last_token_rows())]
        for t in range(32, 40):
            out.append((ids[t:t + 1], build_metadata([t], [1], table, 16), None))
        return out

    outs = []
    for fast in (False, True):
        outs.append(_run(model, fast, steps(), _caches(cfg, 6, 16)))
    assert isinstance(model._fast, FastForward)
    for a, b in zip(*outs):
        scale = a.abs().max()
        assert ((a - b).abs().max() / scale).item() <= 1e-5


def test_capped_context_keeps_the_fast_path(models):
    """LLM(context_length=...) replaces the config with a smaller max_position after loading:
    the runner is rebuilt for it, still used, and refuses positions past the cap."""
    import dataclasses

    model = models["random-llama"].model
    full = model.config
    caches = _caches(full, 4, 4)
    try:
        model.config = dataclasses.replace(full, max_position=6)
        with torch.inference_mode():
            model(_ids(5, 1), build_metadata([0], [5], [[0, 1]], 4), caches)
            assert isinstance(model._fast, FastForward) and model._fast.config is model.config
            with pytest.raises(ValueError, match=r"positions must lie in \[0, 6\)"):
                model(_ids(2, 2), build_metadata([5], [2], [[0, 1]], 4), caches)
    finally:
        model.config = full


# ------------------------------------------------------ opt-in int8 activations


def _int8_steps(ids):
    table = [[3, 1, 0, 2]]
    out = [(ids[:20], build_metadata([0], [20], table, 8), None)]  # prefill: every row's logits
    for t in range(20, 26):
        out.append((ids[t:t + 1], build_metadata([t], [1], table, 8), None))
    return out


def _int8_run(model, isa: str | None = None):
    before = L._C.cpu_isa()
    if isa:
        L._C.set_cpu_isa(isa)
    try:
        model.int8_activations = True
        return _run(model, True, _int8_steps(_ids(26, seed=11)), _caches(model.config, 4, 8))
    finally:
        model.int8_activations = False
        L._C.set_cpu_isa(before)


@pytest.mark.parametrize("case", cases("random-llama", "gguf-llama", "gguf-qwen2"))
def test_int8_activations_stay_near_exact_and_switch_back(models, case):
    """int8 activations move the logits a little (prefill and decode rows alike; with the
    prepacked AVX-512 panels and with the per-call AVX2 kernels), and switching int8 off gives the
    exact path's logits back bit for bit. (The kernels themselves are checked against their
    reference in tests/ops/test_qlinear.py; through a model, a last-bit difference can flip an
    activation's rounding, so two int8 runs are compared with the exact one, not each other.)"""
    model = models[case].model
    with _one_thread():
        exact = _run(model, True, _int8_steps(_ids(26, seed=11)), _caches(model.config, 4, 8))
        runs = [_int8_run(model)] + ([_int8_run(model, "avx2")] if L._C.detected_isa() == "avx512" else [])
        again = _run(model, True, _int8_steps(_ids(26, seed=11)), _caches(model.config, 4, 8))
    for got in runs:
        moved = 0.0
        for e, g in zip(exact, got):
            rel = ((e - g).abs().max() / e.abs().max()).item()
            assert rel <= 0.15, rel
            moved = max(moved, rel)
        assert moved > 0.0, "int8 activations were not used"
    for e, a in zip(exact, again):
        assert torch.equal(e, a)


def test_smollm2_int8_activations_keep_the_greedy_choice(smollm2_path):
    """On the real model and an English prompt, int8 activations keep the exact path's top token
    on most positions and move the logits by a few percent of their range (measured figures:
    docs/kernels.md)."""
    from pyllm.api import LLM

    llm = LLM.from_path(smollm2_path)
    model, cfg = llm.model, llm.config
    text = ("The history of the Roman Empire spans many centuries. It began when Augustus became "
            "the first emperor in 27 BC, and in the West it ended in 476 AD when the last emperor "
            "was deposed. During this time, Rome built roads, aqueducts and cities.")
    ids = torch.tensor(llm.tokenizer.encode(text)[:64])
    n = len(ids)
    meta = build_metadata([0], [n], [list(range(4))], 16)
    exact = _run(model, True, [(ids, meta, None)], _caches(cfg, 4, 16))[0]
    model.int8_activations = True
    try:
        got = _run(model, True, [(ids, meta, None)], _caches(cfg, 4, 16))[0]
    finally:
        model.int8_activations = False
    agree = (exact.argmax(-1) == got.argmax(-1)).float().mean().item()
    rel = ((exact - got).abs().max() / exact.abs().max()).item()
    assert agree >= 0.85, agree
    assert 0 < rel <= 0.2, rel


def test_int8_panels_release_the_mapped_matrices(smollm2_path):
    """Once int8 panels replace the block matrices, their memory-mapped pages are dropped (and
    re-read only where touched again, e.g. a tied table's embedding rows): the output is the same
    as with every page kept."""
    from test_gguf_reader import mapping_rss_kib

    from pyllm.api import LLM
    from pyllm.sampling_params import SamplingParams

    params = SamplingParams.greedy(max_tokens=12)
    texts, resident = [], []
    for release in (True, False):
        llm = LLM.from_path(smollm2_path, int8_activations=True)
        if not release:
            llm.model.release_pages = None
        texts.append(llm.generate("The three primary colours are", params)[0].text)
        resident.append(mapping_rss_kib(llm.loaded.gguf))
        packed = llm.model._fast.runner.packed_bytes
        del llm
        import gc

        gc.collect()
    assert texts[0] == texts[1]
    if packed:  # AVX-512: panels were packed
        assert resident[1] - resident[0] > 0.5 * packed / 1024
