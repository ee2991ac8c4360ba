"""The engine on the newer families. Qwen3 and Gemma 3 (QK-norm; Gemma 3's post-norms, GeGLU and
two RoPE bases) are not built by the fused CPU runner: they run op by op with a
FastPathUnavailable warning. Phi-3 (fused QKV and gate/up, LongRoPE on part of each head) runs
on the fused runner. Either way continuous batching, chunked prefill, preemption and prefix
sharing give the simple generation loop's greedy tokens."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pyllm.engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from pyllm.generation import generate_stream  # noqa: E402
from pyllm.model import fast  # noqa: E402
from pyllm.model.loader import load_model  # noqa: E402
from pyllm.model.runtime import FastPathUnavailable  # noqa: E402
from pyllm.sampling_params import SamplingParams  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_random_llama as M  # noqa: E402

VOCAB = M.ByteTokenizer.vocab_size
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5)
CASES = {
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32,
                                              tie_word_embeddings=True),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"]),
    "phi3": lambda: transformers.Phi3Config(
        **COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        original_max_position_embeddings=128,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5, "short_factor": [1.0, 1.5, 2.0, 4.0],
                         "long_factor": [1.0, 3.0, 7.0, 20.0],
                         "original_max_position_embeddings": 128}),
}
FUSED = {"phi3"}  # the families the fused CPU runner builds


def _model(case: str, folder: Path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(CASES[case]())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    hf.save_pretrained(folder, safe_serialization=True)
    return load_model(folder).model


@pytest.fixture(scope="module", params=list(CASES))
def runner(request, tmp_path_factory):
    model = _model(request.param, tmp_path_factory.mktemp(request.param))
    model.family = request.param
    return model


def _reference(model, tok, prompts, params):
    out = {}
    for ev in generate_stream(model, tok, prompts, params):
        if ev.finished:
            out[ev.request] = ev.completion.token_ids
    return out


def _engine(model, tok, prompts, params, **config):
    engine = LLMEngine(model, tok, EngineConfig(**config))
    out = {}
    for ev in engine.run((i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))):
        if ev.finished:
            out[ev.request] = ev.completion.token_ids
    return out, engine


@pytest.mark.skipif(not fast.available(), reason="the C++ runner is not built")
def test_fused_runner_or_op_by_op_with_a_warning(runner):
    runner._fast = None  # build (or refuse) again, whatever ran before
    runner.fast_unsupported = None
    if runner.family in FUSED:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert runner._fast_forward() is not None
        assert runner.fast_unsupported is None
        return
    with pytest.warns(FastPathUnavailable, match="QK-norm"):
        assert runner._fast_forward() is None
    assert "QK-norm" in (runner.fast_unsupported or "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per runner, not every step
        runner._fast = None
        runner._fast_forward()


@pytest.mark.parametrize("config", [
    dict(kv_cache_tokens=1024),
    dict(kv_cache_tokens=1024, max_num_batched_tokens=7, max_num_seqs=2),
    dict(kv_cache_tokens=64, block_size=4),  # preemption by recompute
])
def test_engine_matches_simple_loop(runner, config):
    tok = M.ByteTokenizer()
    prompts = [tok.encode(t) for t in ("The quick brown fox", "def fib(n):", "Hi", "1 2 3 4 5")]
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True) for _ in prompts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastPathUnavailable)
        want = _reference(runner, tok, prompts, params)
        got, engine = _engine(runner, tok, prompts, params, **config)
    assert got == want
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_prefix_sharing_prefills_common_prefix_once(runner):
    tok = M.ByteTokenizer()
    shared = tok.encode("A shared system prompt that every request starts with. " * 2)
    prompts = [shared + tok.encode(f" Q{i}?") for i in range(3)]
    params = [SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastPathUnavailable)
        got, engine = _engine(runner, tok, prompts, params, kv_cache_tokens=1024, max_num_seqs=1)
        want = _reference(runner, tok, prompts, params)
    full = sum(len(p) for p in prompts) + 3 * 3
    assert engine.stats["computed_tokens"] <= full - 2 * (len(shared) // 16) * 16
    assert got == want
