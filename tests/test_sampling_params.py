"""SamplingParams: defaults, validation errors that name the field and the range, greedy(),
replace(), and from_mapping() for CLI/JSONL overrides."""

from __future__ import annotations

import math

import pytest

from pyllm.sampling_params import DEFAULT_SAMPLERS, SamplingParams, split_chain


def test_defaults_follow_vllm_and_llama_cpp():
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.min_tokens, p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (
        1, 256, 0, 1.0, 0, 1.0, 0.0, 1.0)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty, p.penalty_last_n) == (1.0, 0.0, 0.0, 64)
    assert p.logit_bias is None and p.seed is None and p.logprobs is None and p.samplers is None
    assert p.stop == () and p.stop_token_ids == () and p.ignore_eos is False


@pytest.mark.parametrize("field,value,range_text", [
    ("n", 0, "1..128"),
    ("max_tokens", 0, ">= 1"),
    ("min_tokens", 300, "0..max_tokens"),
    ("temperature", -0.1, ">= 0"),
    ("temperature", math.inf, "finite"),
    ("temperature", math.nan, "finite"),
    ("top_k", -2, ">= 0"),
    ("top_k", 2.5, "integer"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.01, "(0, 1]"),
    ("min_p", -0.1, "[0, 1]"),
    ("typical_p", 0.0, "(0, 1]"),
    ("repetition_penalty", 0.0, "> 0"),
    ("frequency_penalty", 2.5, "[-2, 2]"),
    ("presence_penalty", -3.0, "[-2, 2]"),
    ("penalty_last_n", -2, ">= -1"),
    ("logit_bias", {5: 101.0}, "[-100, 100]"),
    ("logit_bias", {-1: 1.0}, "token ids"),
    ("logit_bias", [1, 2], "mapping"),
    ("seed", -1, "2**64-1"),
    ("seed", 2**64, "2**64-1"),
    ("stop", [""], "non-empty strings"),
    ("stop_token_ids", [-1], "token ids"),
    ("ignore_eos", "yes", "True or False"),
    ("logprobs", 21, "0..20"),
    ("samplers", ";;", "chain"),
    ("mirostat_tau", 0.0, "> 0"),
    ("mirostat_eta", 0.0, "(0, 1]"),
    ("dry_multiplier", -1.0, ">= 0"),
    ("dry_base", 0.5, ">= 1"),
    ("dry_allowed_length", 0, ">= 1"),
    ("xtc_probability", 1.5, "[0, 1]"),
    ("xtc_threshold", -0.1, "[0, 1]"),
])
def test_invalid_values_name_the_field_and_range(field, value, range_text):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value})
    text = str(err.value)
    assert field in text and range_text in text


def test_normalization():
    p = SamplingParams(top_k=-1, stop="###", stop_token_ids=7, logit_bias={"5": -100, 6: float("-inf")},
                       samplers=["top-k", "Temperature"], temperature=1)
    assert p.top_k == 0 and p.stop == ("###",) and p.stop_token_ids == (7,)
    assert p.logit_bias == {5: -100.0, 6: float("-inf")}
    assert p.samplers == "top_k;temperature" and isinstance(p.temperature, float)
    assert SamplingParams(logit_bias={}).logit_bias is None


def test_greedy_and_replace():
    g = SamplingParams.greedy(max_tokens=8)
    assert g.temperature == 0.0 and g.max_tokens == 8 and g.greedy_draw
    r = g.replace(top_p=0.5)
    assert r.top_p == 0.5 and r.max_tokens == 8 and g.top_p == 1.0
    with pytest.raises(ValueError, match="top_p"):
        g.replace(top_p=2.0)
    with pytest.raises(ValueError, match="did you mean 'top_p'"):
        g.replace(topp=0.5)


def test_from_mapping_converts_strings():
    p = SamplingParams.from_mapping({"temperature": "0.7", "top_k": "40", "seed": "123", "stop": "END",
                                     "ignore_eos": "true", "logit_bias": '{"5": -100}',
                                     "stop_token_ids": "[1, 2]", "logprobs": "none",
                                     "samplers": "top_k;temperature"})
    assert (p.temperature, p.top_k, p.seed, p.stop, p.ignore_eos) == (0.7, 40, 123, ("END",), True)
    assert p.logit_bias == {5: -100.0} and p.stop_token_ids == (1, 2) and p.logprobs is None
    # JSON values as they come from a JSONL record
    q = SamplingParams.from_mapping({"stop": ["a", "b"], "max_tokens": 16}, base=p)
    assert q.stop == ("a", "b") and q.max_tokens == 16 and q.top_k == 40


def test_from_mapping_names_unknown_fields_and_bad_values():
    with pytest.raises(ValueError, match="unknown sampling parameter 'temprature'; did you mean 'temperature'"):
        SamplingParams.from_mapping({"temprature": 0.5})
    with pytest.raises(ValueError, match="valid names: n, max_tokens"):
        SamplingParams.from_mapping({"zzzz": 1})
    with pytest.raises(ValueError, match="top_k must be an integer"):
        SamplingParams.from_mapping({"top_k": "many"})


def test_to_dict_round_trips():
    p = SamplingParams(temperature=0.3, stop=("x",), logit_bias={1: 2.0}, samplers="top_k;temperature")
    assert SamplingParams.from_mapping(p.to_dict()) == p


def test_default_chain():
    assert split_chain(DEFAULT_SAMPLERS) == ["penalties", "logit_bias", "top_k", "typical_p", "top_p",
                                             "min_p", "temperature"]


def test_hashable_with_logit_bias():
    a, b = SamplingParams(logit_bias={1: 2.0}), SamplingParams(logit_bias={1: 2.0})
    assert a == b and hash(a) == hash(b) and len({a, b, SamplingParams()}) == 2


# ---------------------------------------------------------------------- bounds on size


@pytest.mark.parametrize("field,value,range_text", [
    ("n", 10**9, "1..128"),  # each completion holds its own state: 10**9 exhausted memory
    ("n", 129, "1..128"),
    ("top_k", 2**63, "2**31-1"),  # an OverflowError deep in the sampler before
    ("max_tokens", 2**63, "2**31-1"),
    ("penalty_last_n", 2**40, "2**31-1"),
    ("dry_allowed_length", 2**31, "2**31-1"),
    ("dry_penalty_last_n", 2**64, "2**31-1"),
    ("logprobs", 21, "0..20"),
    ("logprobs", 2**63, "0..20"),
    ("stop_token_ids", [2**40], "2**31-1"),
    ("logit_bias", {2**40: 1.0}, "2**31-1"),
])
def test_sizes_have_bounds_that_the_error_names(field, value, range_text):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}") as e:
        SamplingParams(**{field: value})
    shown = next(iter(value)) if isinstance(value, dict) else value
    assert range_text in str(e.value) and str(shown).strip("[]") in str(e.value)


def test_the_bounds_themselves_are_allowed():
    p = SamplingParams(n=128, top_k=2**31 - 1, max_tokens=2**31 - 1, logprobs=20,
                       stop_token_ids=[2**31 - 1])
    assert (p.n, p.top_k, p.logprobs) == (128, 2**31 - 1, 20)
