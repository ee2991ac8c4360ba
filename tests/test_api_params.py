"""The Python API's input checks and the engine's sampler: a mapping as sampling parameters, a
CUDA device on a torch without CUDA, DRY's sequence breakers through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pyllm
from pyllm.api import LLM
from pyllm.generation import generate_stream
from pyllm.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def llm(smollm2_path: Path):
    return LLM.from_path(smollm2_path)


def test_dry_sequence_breakers_reach_the_engine(llm) -> None:
    """The engine hands its tokenizer to the sampler: DRY stops matching at a sequence breaker
    ("\\n" by default), so the engine samples what the simple generation loop samples."""
    prompt = "a\nb\na\nb\na\nb\na\n"
    params = SamplingParams(temperature=0, max_tokens=1, samplers="dry;temperature",
                            dry_multiplier=5, dry_allowed_length=1)
    ids = llm.encode_prompt(prompt)
    loop = next(ev.completion for ev in generate_stream(llm.model, llm.tokenizer, [ids], [params])
                if ev.finished)
    engine = llm.generate(prompt, params)[0]
    assert engine.token_ids == loop.token_ids
    assert llm.engine.engine.sampler.tokenizer is llm.tokenizer


def test_generate_accepts_a_mapping_of_sampling_fields(llm) -> None:
    as_mapping = llm.generate("The sky is", {"temperature": 0, "max_tokens": 4})[0]
    as_params = llm.generate("The sky is", SamplingParams(temperature=0, max_tokens=4))[0]
    assert as_mapping.token_ids == as_params.token_ids and len(as_mapping.token_ids) == 4
    pair = llm.generate(["a", "b"], [{"max_tokens": 1}, SamplingParams(max_tokens=2)])
    assert [len(r.token_ids) <= m for r, m in zip(pair, (1, 2))] == [True, True]


@pytest.mark.parametrize("params,error,fragment", [
    ({"temprature": 0}, ValueError, "temprature"),
    ([{"max_tokens": 1}], ValueError, "list of 1 but there are 2 prompts"),
    ([{"max_tokens": 1}, 3], TypeError, "params[1] must be a SamplingParams or a mapping"),
    ("temperature=0", TypeError, "got str"),
])
def test_bad_params_say_what_was_wrong(llm, params, error, fragment) -> None:
    with pytest.raises(error) as info:
        llm.generate(["a", "b"], params)
    assert fragment in str(info.value)


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch, smollm2_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch sees no CUDA device here.*use device='cpu'"):
        pyllm.load(str(smollm2_path), device="cuda", progress=False)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        pyllm.load(str(smollm2_path), device="gpu", progress=False)
