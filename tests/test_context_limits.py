"""The context a model runs with: a file's context length (four bytes of an untrusted header)
must not decide how much memory loading takes. The default is the trained context capped at
DEFAULT_CONTEXT_CAP, with a warning; `context_length` picks anything up to the trained one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_random_llama as M

from pyllm import ops
from pyllm.model.context import DEFAULT_CONTEXT_CAP, choose_context
from pyllm.model.loader import load_model
from pyllm.ops.rope import rope_inv_freq

HUGE = 1 << 24  # the largest context a config may state


@pytest.fixture(scope="module")
def huge_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctx") / "huge.gguf"
    M.write_random_llama(path, dict(M.SHAPES["tiny"], context=HUGE))
    return path


def _run_limited(code: str, memory_bytes: int, timeout: float = 60) -> dict:
    """Run `code` in a fresh interpreter whose address space is capped; it prints one JSON line."""
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, ({memory_bytes}, {memory_bytes}))
        sys.path.insert(0, {str(ROOT / 'scripts')!r})
    """) + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_huge_stated_context_loads_quickly_and_small(huge_gguf):
    """2**24 tokens in the header: the RoPE table was built for all of them (several GB, then
    `RuntimeError: DefaultCPUAllocator`). Now the load takes the capped context, under a 2 GB
    address-space limit, in well under 10 s."""
    out = _run_limited(f"""
        import torch
        from pyllm.model.loader import load_model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        m = load_model({str(huge_gguf)!r})
        seconds = time.perf_counter() - start
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"seconds": seconds, "grew_kb": grew, "rows": m.model.gpt.cos_sin.shape[0],
                          "context": m.config.max_position,
                          "trained": m.config.trained_context}}))
    """, 2 << 30)
    assert out["context"] == out["rows"] == DEFAULT_CONTEXT_CAP and out["trained"] == HUGE
    assert out["seconds"] < 10
    assert out["grew_kb"] < 200 * 1024, out  # the table is 8192 x 16 floats: 0.5 MB


def test_the_cap_is_announced(huge_gguf, caplog):
    with caplog.at_level(logging.WARNING, logger="pyllm.model"):
        m = load_model(huge_gguf)
    assert m.config.max_position == DEFAULT_CONTEXT_CAP
    [record] = [r for r in caplog.records if "trained for a context" in r.getMessage()]
    assert str(HUGE) in record.getMessage() and "--ctx" in record.getMessage()


def test_context_length_picks_more_or_less(huge_gguf, caplog):
    with caplog.at_level(logging.WARNING, logger="pyllm.model"):
        more = load_model(huge_gguf, context_length=20000)
        less = load_model(huge_gguf, context_length=100)
    assert not [r for r in caplog.records if "trained for a context" in r.getMessage()]
    assert more.config.max_position == more.model.gpt.cos_sin.shape[0] == 20000
    assert less.config.max_position == less.model.gpt.cos_sin.shape[0] == 100
    assert more.config.trained_context == less.config.trained_context == HUGE


@pytest.mark.parametrize("bad", [0, HUGE + 1, 2.5, True, "8192"])
def test_a_context_outside_the_trained_one_is_a_value_error(huge_gguf, bad):
    with pytest.raises(ValueError, match=r"context_length must be an integer in \[1, 16777216\]"):
        load_model(huge_gguf, context_length=bad)


def test_a_small_trained_context_is_used_as_is(tmp_path):
    path = tmp_path / "small.gguf"
    M.write_random_llama(path, M.SHAPES["tiny"])
    m = load_model(path)
    assert m.config.max_position == m.config.trained_context == M.SHAPES["tiny"]["context"]
    assert choose_context(100, None) == 100 and choose_context(10**6, None) == DEFAULT_CONTEXT_CAP


def test_a_hugging_face_config_is_capped_too(tmp_path):
    shape = dict(M.SHAPES["tiny"], context=HUGE)
    state = M.write_random_llama(tmp_path / "m.gguf", shape)
    M.write_hf_folder(tmp_path / "hf", shape, state)
    m = load_model(tmp_path / "hf")
    assert (m.config.max_position, m.config.trained_context) == (DEFAULT_CONTEXT_CAP, HUGE)
    assert m.model.gpt.cos_sin.shape[0] == DEFAULT_CONTEXT_CAP


def test_the_kv_pool_follows_the_context_in_use(huge_gguf):
    """The engine reserves at least one full context: one of 2**24 tokens before."""
    from pyllm.engine.llm_engine import EngineConfig, LLMEngine

    m = load_model(huge_gguf)
    engine = LLMEngine(m.model, M.ByteTokenizer(), EngineConfig(kv_cache_mb=1))
    assert engine.num_blocks * engine.config.block_size < DEFAULT_CONTEXT_CAP + 64


def test_an_allocation_failure_names_the_size(huge_gguf):
    """A context the machine cannot hold is a ModelFormatError that says how much was needed,
    not the allocator's message."""
    out = _run_limited(f"""
        from pyllm.errors import ModelFormatError
        from pyllm.model.loader import load_model
        try:
            load_model({str(huge_gguf)!r}, context_length={HUGE})
            print(json.dumps({{"error": None}}))
        except ModelFormatError as e:
            print(json.dumps({{"error": str(e)}}))
    """, 1536 << 20)
    assert out["error"] is not None, "the 1 GiB table fit under a 1.5 GB limit?"
    assert "1024 MiB" in out["error"] and str(HUGE) in out["error"]
    assert "alloc" not in out["error"].lower().replace("allocated", "")


def test_the_table_is_the_same_made_in_slices():
    """rope_cos_sin builds its rows a slice at a time; every row matches a one-shot float64
    computation of the same formula."""
    inv = rope_inv_freq(8, 10000.0, None)
    n = 70_000
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    want = torch.cat([angles.cos(), angles.sin()], dim=-1).float()
    assert torch.equal(ops.rope_cos_sin(n, 8, 10000.0), want)



def test_the_cli_announces_the_cap_and_ctx_lifts_it(smollm2_path, tmp_path):
    """The default model with a header that claims 2**24 tokens of context runs as before, with
    a one-line warning; --ctx N runs with N and says nothing."""
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    data = bytearray(smollm2_path.read_bytes())
    key = b"llama.context_length"
    at = data.index(key) + len(key) + 4  # after the key and its uint32 type tag
    assert int.from_bytes(data[at:at + 4], "little") == 8192
    data[at:at + 4] = HUGE.to_bytes(4, "little")
    path = tmp_path / "claims-16m.gguf"
    path.write_bytes(bytes(data))
    args = ["run", str(path), "Hello", "--max-tokens", "1", "--temperature", "0"]
    capped = CliRunner().invoke(cli, args)
    assert capped.exit_code == 0, capped.output
    assert f"warning: {path} was trained for a context of {HUGE} tokens; using 8192" \
        in capped.stderr
    chosen = CliRunner().invoke(cli, [*args, "--ctx", "9000"])
    assert chosen.exit_code == 0, chosen.output
    assert "trained for a context" not in chosen.stderr


def test_a_context_whose_kv_cache_cannot_fit_is_refused_at_load(huge_gguf):
    """The engine reserves one full context of KV-cache: a context that no memory of this
    machine holds is refused when the model loads, naming the size, not at the first request
    by the allocator."""
    from pyllm.model.context import check_kv_memory, with_context

    cfg = with_context(load_model(huge_gguf).config, HUGE)
    need = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 2 * HUGE  # half precision
    with pytest.raises(ValueError, match=rf"16777216 tokens needs {need / 2**30:.1f} GiB of KV"):
        check_kv_memory(cfg, memory=need - 1)
    check_kv_memory(cfg, memory=need)
