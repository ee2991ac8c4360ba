"""Whole models on the CUDA kernels, run by the CUDA emulator on the CPU, against the CPU path.

test_cuda_emulated.py checks each kernel on its own; here every pyllm op of a model's forward
(and the engine's sampler) takes its CUDA code: the op-by-op forward with the CUDA kernels of one
family, the validated hot paths (`L.on_cuda`), the CUDA graph runner's static-buffer path
(`graphs=False`: the same padded buffers and host metadata, without capture) and sampling as
`decode_and_sample` does it. What this adds to the per-kernel tests is the wiring: the shapes the
model really passes (v as a strided view of the QKV output, GQA heads, the prefill sizes that
pick each qlinear path, workspace sizes), step after step on one paged cache.

It also checks what makes a decode step safe to replay as a CUDA graph, which the emulator
cannot capture: every step of a bucket calls the same kernels with the same shapes and scalars.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pyllm import plugins
from pyllm.model.batch import ContiguousKVCache, build_metadata
from pyllm.model.cuda_graph import CudaGraphRunner
from pyllm.model.loader import load_model
from pyllm.ops import _library as L
from pyllm.ops import attention as A
from pyllm.ops import kv_cache as K
from pyllm.ops.sampling import NEUTRAL_FPARAMS

from test_cuda_emulated import FAMILIES, E, emulated_cuda  # noqa: F401  (E is a fixture)
from test_cuda_emulated import _EmulatedEntries
from test_cuda_emulated import view as emulator_view

Q = importlib.import_module("pyllm.ops.qlinear")
R = importlib.import_module("pyllm.ops.rope")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
import make_random_llama as M  # noqa: E402
from test_cuda_graph import AFTER_GRAPH, IN_GRAPH, VOCAB  # noqa: E402
from test_cuda_graph import _generate as generate  # noqa: E402

# A small Llama with SmolLM2's head layout (head dim 64, 3 query heads a KV head), so the tuned
# attention serves it, and matrices wide enough for several qlinear blocks.
SHAPE = dict(n_layer=2, n_embd=192, n_ff=320, n_head=3, n_kv_head=1, vocab=VOCAB, context=512,
             rope_theta=10000.0)


@contextlib.contextmanager
def model_on_emulated_cuda(E, model: torch.nn.Module, family: str):
    """Every pyllm op on CPU tensors runs its CUDA implementation on the emulator, as on a GPU
    (the model's fast C++ CPU forward and qlinear's CPU shortcut are off meanwhile)."""
    saved = L.on_cuda, A._HAS_CUDA, K._HAS_CUDA, R._HAS_CUDA, Q._FAST, model.fast_path
    L.on_cuda = lambda t: True
    A._HAS_CUDA = K._HAS_CUDA = R._HAS_CUDA = True
    Q._FAST, model.fast_path = False, False
    try:
        with torch.library._scoped_library("pyllm", "IMPL") as lib:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
                for name, impl in L.CUDA_IMPLS.items():
                    lib.impl(name, impl, "CPU")
            with emulated_cuda(E, family):
                yield
    finally:
        L.on_cuda, A._HAS_CUDA, K._HAS_CUDA, R._HAS_CUDA, Q._FAST, model.fast_path = saved


def test_every_op_has_a_cuda_implementation():
    """The tests below replace every op by its CUDA implementation: a new op without one would
    reach its CPU kernel there, which fails on the emulator's tensor views."""
    assert sorted("pyllm::" + n for n in L.CUDA_IMPLS) == sorted(L.LIB._op_defs)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("emulated-llama") / "model.gguf"
    M.write_random_llama(path, SHAPE, seed=3, scale=0.12, embed_scale=0.5)
    return load_model(path).model


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_model(smollm2_path).model


# New tokens per sequence, step by step, on three sequences: a prefill of 140 tokens (qlinear's
# 64x64 tile, or cuBLAS in the tuned family), a decode step (the GEMV), a 13-token step of one
# sequence (the tuned split-K tile), another decode step.
EVERY_PATH = ([70, 50, 20], [1, 1, 1], [13, 0, 0], [1, 1, 1])


def _steps(plan, vocab: int, seed: int):
    """(token ids, num_cached, num_new, sequences) for each step of `plan`."""
    g = torch.Generator().manual_seed(seed)
    lengths = [0] * len(plan[0])
    for new in plan:
        seqs = [s for s, n in enumerate(new) if n]
        counts = [new[s] for s in seqs]
        ids = torch.randint(0, vocab, (sum(counts),), generator=g)
        yield ids, [lengths[s] for s in seqs], counts, seqs
        for s in seqs:
            lengths[s] += new[s]


def _run_steps(model, plan, vocab: int, kv_dtype: torch.dtype) -> list[torch.Tensor]:
    """Each step's last-token logits, on one paged cache whose blocks each sequence holds
    scattered over the pool, as the engine's block manager leaves them."""
    cfg, block_size, blocks_per_seq = model.config, 8, 12
    pool = len(plan[0]) * blocks_per_seq
    order = torch.randperm(pool, generator=torch.Generator().manual_seed(1)).tolist()
    tables = [order[s:s + blocks_per_seq] for s in range(0, pool, blocks_per_seq)]
    caches = [(torch.zeros(pool, block_size, cfg.n_kv_head, cfg.head_dim, dtype=kv_dtype),
               torch.zeros(pool, block_size, cfg.n_kv_head, cfg.head_dim, dtype=kv_dtype))
              for _ in range(cfg.n_layer)]
    out = []
    with torch.inference_mode():
        for ids, cached, new, seqs in _steps(plan, vocab, seed=2):
            meta = build_metadata(cached, new, [tables[s] for s in seqs], block_size, "cpu")
            out.append(model(ids, meta, caches, meta.last_token_rows()))
    return out


def _assert_logits_match(got: list[torch.Tensor], want: list[torch.Tensor], **tol) -> None:
    for step, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"step {step}: {m}")
        assert torch.equal(g.argmax(-1), w.argmax(-1))


# A bfloat16 cache rounds what the layers before wrote: where the two paths' float32 sums differ
# in the last bits, a value can round to the neighbouring bfloat16 (2**-8 apart), and later
# layers read that.
LOGITS_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=4e-3, atol=4e-3)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_small_model_logits_match_the_cpu_path(E, small_model, family, kv_dtype):
    want = _run_steps(small_model, EVERY_PATH, SHAPE["vocab"], kv_dtype)
    with model_on_emulated_cuda(E, small_model, family):
        got = _run_steps(small_model, EVERY_PATH, SHAPE["vocab"], kv_dtype)
    _assert_logits_match(got, want, **LOGITS_TOL[kv_dtype])


def test_smollm2_logits_match_the_cpu_path(E, smollm2):
    """The default model's weights (30 layers; Q4_1 matrices, a Q8_0 head) on the tuned kernels,
    the family no GPU has run yet: a 13-token prefill of two sequences (the split-K tile) and a
    decode step (the GEMV, decode attention). ~20 s: the emulator switches threads at every
    shuffle, so the general family's larger tiles are left to the small model above."""
    plan = ([9, 4], [1, 1])
    vocab = smollm2.config.vocab_size
    want = _run_steps(smollm2, plan, vocab, torch.float32)
    with model_on_emulated_cuda(E, smollm2, "tuned"):
        got = _run_steps(smollm2, plan, vocab, torch.float32)
    _assert_logits_match(got, want, rtol=1e-3, atol=1e-3)


@pytest.fixture
def builtin_samplers():
    """The built-in sampler steps, registered from the plugin module itself when no entry point
    brought them (scripts/asan_tests.sh runs a staged tree, not an installed one): a missing or
    broken plugin then fails the test instead of skipping it."""
    if plugins.samplers():
        yield
        return
    import pyllm_samplers

    with plugins.registered(pyllm_samplers, name="samplers"):
        assert "top_k" in plugins.samplers()
        yield


def test_engine_samples_as_on_the_cpu(E, small_model, builtin_samplers):
    """The engine with the CUDA graph runner's decode path (host metadata, static buffers, the
    sampler run as in the graph) on the emulated tuned kernels: the CPU engine's seeded tokens,
    for rows sampled in the graph and rows sampled after it (a penalty, a bias, top log-probs)."""
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (11, 3, 25, 7, 1, 16)]
    runner = dict(max_batch=8, graphs=False, host_metadata=True)
    for params in (IN_GRAPH, IN_GRAPH[:3] + AFTER_GRAPH):
        want, _ = generate(small_model, prompts, params=params)
        with model_on_emulated_cuda(E, small_model, "tuned"):
            got, engine = generate(small_model, prompts, runner_kwargs=runner, params=params)
        assert [t for t, _ in got.values()] == [t for t, _ in want.values()]
        for r in want:
            torch.testing.assert_close(torch.tensor(got[r][1]), torch.tensor(want[r][1]), rtol=1e-4, atol=1e-4)
        assert (engine.forward.stats["sampled"] > 0) == (params is IN_GRAPH)


class KernelCalls:
    """Records every CUDA kernel entry the ops call: its name, each tensor argument's dtype,
    shape and strides, and every other argument (scalars); not addresses."""

    def __init__(self, E) -> None:
        self.E, self.calls, self._views = E, [], {}

    def view(self, t: torch.Tensor):
        v = emulator_view(self.E, t)
        # v is kept alive with its description, so its id is not reused by a later view
        self._views[id(v)] = (v, ("tensor", t.dtype, tuple(t.shape), t.stride()))
        return v

    def __getattr__(self, name: str):
        fn = getattr(self.E, name)

        def call(*args):
            self.calls.append((name,) + tuple(self._views[id(a)][1] if id(a) in self._views else a
                                              for a in args))
            return fn(*args)
        return call

    @contextlib.contextmanager
    def recording(self):
        """Inside model_on_emulated_cuda: route the CUDA entries and views through the log."""
        saved = L._C, L.view
        L._C, L.view = _EmulatedEntries(self, saved[0]), self.view
        try:
            yield self.calls
        finally:
            L._C, L.view = saved
            self._views.clear()


def _decode_step_calls(E, model, family: str, steps) -> list[list[tuple]]:
    """The kernel calls of each decode step, run as CudaGraphRunner.decode_and_sample runs the
    steps of one bucket (batch 4, block-table width 16), with the sampler in the step."""
    cfg = model.config
    cache = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 4, 120, block_size=8)
    runner = CudaGraphRunner(model, max_batch=4, min_width=16, graphs=False)
    g = torch.Generator().manual_seed(6)
    lengths = [5, 17, 30, 44]
    with torch.inference_mode():
        for s, n in enumerate(lengths):
            ids = torch.randint(0, VOCAB, (n,), generator=g)
            model(ids, cache.metadata([s], [0], [n]), cache.kv_caches)
    log = KernelCalls(E)
    per_step = []
    with model_on_emulated_cuda(E, model, family), log.recording() as calls:
        for seqs, temperature, top_k in steps:
            ids = torch.randint(0, VOCAB, (len(seqs),), generator=g)
            meta = cache.metadata(seqs, [lengths[s] for s in seqs], [1] * len(seqs))
            fparams = torch.tensor([(temperature,) + NEUTRAL_FPARAMS[1:]] * len(seqs))
            iparams = torch.tensor([[top_k, 7, lengths[s]] for s in seqs])
            calls.clear()
            runner.decode_and_sample(ids, meta, cache.kv_caches, fparams, iparams)
            per_step.append(list(calls))
            for s in seqs:
                lengths[s] += 1
    assert runner.stats["sampled"] == len(steps)
    return per_step


# Decode steps of one bucket: other sequences, contexts and sampling settings each time.
BUCKET_STEPS = [([0, 1, 2], 0.0, 0), ([1, 2, 3], 0.8, 20), ([0, 1, 2, 3], 1.3, 0), ([3, 0, 2], 0.5, 5)]


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_of_a_bucket_call_the_same_kernels(E, small_model, family):
    """What a CUDA graph replays: the kernels it captured, with the arguments it captured. So
    every decode step of a bucket must call the same kernels with the same shapes and scalars,
    whatever its sequences, context lengths and sampling settings (those are data in the
    bucket's buffers); a host-side value read from the step's data would be frozen at capture
    and wrong at every replay."""
    calls = _decode_step_calls(E, small_model, family, BUCKET_STEPS)
    assert len(calls[0]) > 5 * small_model.config.n_layer
    names = {c[0] for c in calls[0]}
    assert {"paged_attention_cuda", "qlinear_cuda", "sample_tokens_cuda"} <= names
    for step in calls[1:]:
        assert step == calls[0]


def test_a_data_dependent_launch_is_caught(E, small_model, monkeypatch):
    """The check above sees a plausible mistake: trimming the block table to the longest
    context of the step (fewer columns to read, but a different shape every few steps)."""
    launch = A._launch_cuda

    def trimmed(q, k_cache, v_cache, query_start, context_lens, block_tables, *rest):
        used = -(-int(context_lens.max()) // k_cache.shape[1])
        launch(q, k_cache, v_cache, query_start, context_lens, block_tables[:, :used].contiguous(), *rest)

    monkeypatch.setattr(A, "_launch_cuda", trimmed)
    calls = _decode_step_calls(E, small_model, "general", BUCKET_STEPS)
    assert any(step != calls[0] for step in calls[1:])
