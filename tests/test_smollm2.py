"""The default model, end to end, against transformers: the exact-math proof.

transformers loads the same GGUF (`gguf_file=`), dequantizes every weight to float32 and runs the
model in float32: that is the exact model (a float64 forward agrees to 1e-5). pyllm
computes on the stored Q4_1/Q8_0 blocks with float32 activations, so it must agree:

- next-token log-probs over a 256-token text within 1e-3 (the token's and the top-10 at every
  position);
- greedy continuations of 32 tokens identical on three chat prompts;
- `pyllm perplexity` within 0.1% of transformers on the same windows.

Both get the same token ids (transformers' GGUF-derived tokenizer splits digits differently from
SmolLM2's own, which pyllm follows). transformers takes ~20 s to load the GGUF: once per module.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import pyllm  # noqa: E402
from pyllm import SamplingParams  # noqa: E402

# An original text (written for this test) with numbers, names and punctuation.
TEXT = """\
The lighthouse on Karrow Point was built in 1874 from granite quarried two miles inland, and for
most of its first century it was kept by three families in turn. The first keeper, a former ship's
carpenter named Elias Brand, wrote in his log that the lamp consumed 14 gallons of oil in a
January week and barely 6 in July. His daughter Margit took over in 1911; she replaced the oil
lamp with an acetylene burner, taught herself Morse code from a pamphlet, and in the storm of
March 1923 relayed the distress calls of a grain freighter that had lost its rudder 9 miles
offshore. All 27 crew were brought home by the lifeboat from the harbour at Senn.

Today the tower is automated. A solar panel charges a bank of batteries that runs an LED lantern
visible for 18 nautical miles, and a technician visits twice a year to check the seals, clean
the lens and read the logger. Visitors can climb the 112 steps on summer weekends. At the top,
a small exhibition shows Margit's headphones, a page of her handwriting and a chart on which
she marked, in pencil, every wreck she had heard of between 1911 and 1948: there are 41 crosses,
most of them clustered around the reef that gives the point its name.

Local historians disagree about where that name comes from. One theory holds that "Karrow" is an
old word for a rough stone ridge; another, less likely, that it was the surname of a smuggler who
landed brandy there in the 1790s. What nobody disputes is that the light has not failed once
since it was lit, a record of more than 150 years that the village celebrates each October with
a bonfire, a brass band and a very long dinner.
"""

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Explain in two sentences why the sky is blue."}],
]


@pytest.fixture(scope="module")
def hf(smollm2_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pyllm.load(smollm2_path, progress=False)


@pytest.fixture(scope="module")
def text_ids(llm):
    ids = llm.tokenizer.encode(TEXT)
    assert len(ids) >= 256
    return ids


def _hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1)


def test_next_token_logprobs_match_transformers(llm, hf, text_ids):
    ids = text_ids[:256]
    ref = _hf_logprobs(hf, ids)  # (256, V); row t predicts token t+1
    (scored,) = llm.score([ids], top_n=10)
    worst = 0.0
    for s in scored[1:]:
        row = ref[s.position - 1]
        worst = max(worst, abs(s.logprob - row[s.token_id].item()))
        ref_top = row.topk(10)
        # Our top-10 ids carry transformers' log-probs, and nothing better is missing.
        for tid, lp in s.top:
            worst = max(worst, abs(lp - row[tid].item()))
        assert s.top[-1][1] >= ref_top.values[-1].item() - 1e-3
    assert worst <= 1e-3, f"largest log-prob difference {worst:.2e}"


def _hf_cache_name(hf) -> str:
    """transformers 5.2x renamed forward's and its outputs' `past_key_values` to `cache` (the
    old name still works there, with a FutureWarning); older versions only know the old one."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation, token by token with its KV cache, never stopping
    early (so the whole 32 tokens are compared)."""
    cache = _hf_cache_name(hf)
    out: list[int] = []
    with torch.no_grad():
        res = hf(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = hf(torch.tensor([[tok]]), use_cache=True, **{cache: getattr(res, cache)})
    return out


@pytest.mark.parametrize("chat", range(len(CHATS)))
def test_greedy_continuations_match_transformers(llm, hf, chat):
    prompt = llm.encode_prompt(CHATS[chat])
    ours = llm.generate([prompt], SamplingParams.greedy(max_tokens=32, ignore_eos=True))[0]
    assert ours.token_ids == _hf_greedy(hf, prompt, 32)


def test_perplexity_matches_transformers(llm, hf, tmp_path, smollm2_path):
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    ctx = 128
    res = CliRunner().invoke(cli, ["perplexity", str(smollm2_path), str(path), "--ctx", str(ctx),
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])

    ids = llm.tokenizer.encode(TEXT)
    nll, count = 0.0, 0
    for start in range(0, len(ids), ctx):
        window = ids[start:start + ctx]
        if len(window) < 2:
            continue
        lp = _hf_logprobs(hf, window)
        nll -= sum(lp[t - 1, window[t]].item() for t in range(1, len(window)))
        count += len(window) - 1
    ppl = math.exp(nll / count)
    assert report["tokens_scored"] == count
    assert abs(report["perplexity"] - ppl) / ppl <= 1e-3, (report["perplexity"], ppl)
