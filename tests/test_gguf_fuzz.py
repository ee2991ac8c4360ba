"""Damaged GGUF files: every truncation of a tiny valid file and a mutation fuzzer. Each case
must either load (and then every tensor must read and convert) or raise ModelFormatError, and
finish quickly: a hard timer turns a hang into a failure. Whole models (the context length) and
chat templates from files run in a memory-capped child process (tests/bounded_runner.py)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf_builder as B
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyllm.weights.gguf import ModelFormatError, load_gguf

CASE_SECONDS = 2.0  # far above the few milliseconds a case takes


@contextlib.contextmanager
def time_guard(seconds: float = CASE_SECONDS):
    def on_alarm(signum, frame):
        raise TimeoutError(f"GGUF case took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_or_reject(path, data: bytes) -> bool:
    """True if the file loaded (and all its tensors read), False if rejected cleanly."""
    path.unlink(missing_ok=True)  # rewriting in place (O_TRUNC) is slow on some filesystems
    path.write_bytes(data)
    with time_guard():
        try:
            g = load_gguf(path)
        except ModelFormatError as e:
            assert str(path) in str(e)
            return False
        for name, info in g.tensors.items():
            raw = g.raw(name)
            assert raw.numel() * raw.element_size() == info.nbytes
            try:
                g.weight(name)
            except ModelFormatError:
                pass  # e.g. a damaged K-quant scale that cannot be converted
        for key in g.metadata:
            g.get(key)
        return True


@pytest.fixture(scope="module")
def tiny():
    return B.tiny_gguf()


def test_every_truncation_is_rejected(tmp_path, tiny):
    path = tmp_path / "t.gguf"
    assert load_or_reject(path, tiny.data)
    start = time.perf_counter()
    for n in range(len(tiny.data)):
        assert not load_or_reject(path, tiny.data[:n]), f"truncated to {n} bytes but loaded"
    assert time.perf_counter() - start < 60


INTERESTING_U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 32]
INTERESTING_U32 = [0, 1, 4, 5, 9, 12, 31, 255, 2**31, 2**32 - 1]


def mutate(data: bytes, rng: random.Random, header_end: int) -> bytes:
    """One to a few random edits, mostly in the header (mutated tensor bytes always load)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(header_end if rng.random() < 0.9 else len(b))
        kind = rng.random()
        if kind < 0.4:
            b[pos] ^= 1 << rng.randrange(8)
        elif kind < 0.6:
            b[pos] = rng.randrange(256)
        elif kind < 0.75 and pos + 8 <= len(b):
            struct.pack_into("<Q", b, pos, rng.choice(INTERESTING_U64))
        elif kind < 0.85 and pos + 4 <= len(b):
            struct.pack_into("<I", b, pos, rng.choice(INTERESTING_U32))
        elif kind < 0.93:
            del b[pos:pos + rng.randint(1, 16)]
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)


def test_mutation_fuzzer_seeded(tmp_path, tiny):
    rng = random.Random(20261122)
    path = tmp_path / "m.gguf"
    outcomes = {True: 0, False: 0}
    start = time.perf_counter()
    for _ in range(400):
        outcomes[load_or_reject(path, mutate(tiny.data, rng, tiny.offsets["header_end"]))] += 1
    # the fuzzer exercises both outcomes, and the whole run stays fast
    assert outcomes[True] > 0 and outcomes[False] > 100, outcomes
    assert time.perf_counter() - start < 60


@settings(max_examples=60, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_mutation_fuzzer_hypothesis(tmp_path_factory, edits):
    tiny = B.tiny_gguf()
    b = bytearray(tiny.data)
    for pos, value in edits:
        b[pos % tiny.offsets["header_end"]] = value
    load_or_reject(tmp_path_factory.mktemp("h") / "h.gguf", bytes(b))


def test_random_garbage_after_magic(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "g.gguf"
    for _ in range(100):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        head = b"GGUF" + struct.pack("<I", rng.choice([2, 3]))
        load_or_reject(path, head + body)


# ---------------------------------------------------------------------- bounded work
# Whole models and chat templates from mutated files, run in a child process whose address
# space is capped at 2 GB, each case under a 10 s alarm: a case needing more memory or time
# fails instead of swapping or hanging the machine.

CASE_MEMORY = 2 << 30
CASE_LIMIT_SECONDS = 10.0
RUNNER = Path(__file__).with_name("bounded_runner.py")
CONTEXT_VALUES = [0, 1, 2, 4096, 8192, 8193, 2**16, 2**20, 2**24, 2**24 + 1, 2**31, 2**32 - 1]


def run_bounded(tmp_path, cases: list[dict]) -> list[dict]:
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(cases_file), str(CASE_MEMORY), str(CASE_LIMIT_SECONDS)],
        capture_output=True, text=True, check=False,
        timeout=60 + CASE_LIMIT_SECONDS * len(cases))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), proc.stderr[-2000:]
    return results


@pytest.fixture(scope="module")
def tiny_model_bytes(tmp_path_factory) -> bytes:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import make_random_llama as M

    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    M.write_random_llama(path, M.SHAPES["tiny"])
    return path.read_bytes()


def _context_offset(data: bytes) -> int:
    """Where llama.context_length's uint32 value lies (after the key and its type)."""
    key = b"llama.context_length"
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == B.UINT32
    return at + 4


def test_context_length_values_load_small_and_quick(tmp_path, tiny_model_bytes):
    at = _context_offset(tiny_model_bytes)
    cases = []
    for value in CONTEXT_VALUES:
        b = bytearray(tiny_model_bytes)
        struct.pack_into("<I", b, at, value)
        path = tmp_path / f"ctx-{value}.gguf"
        path.write_bytes(bytes(b))
        cases.append({"kind": "model", "path": str(path)})
    results = run_bounded(tmp_path, cases)
    for value, r in zip(CONTEXT_VALUES, results):
        assert r["outcome"] != "failed", (value, r)
        if 1 <= value <= 2**24:
            assert r["outcome"] == "ok", (value, r)
            assert r["detail"] == f"context {min(value, 8192)} of {value}", (value, r)
        else:
            assert r["outcome"] == "refused" and "context_length" in r["detail"], (value, r)


def test_mutated_whole_models_load_or_refuse_within_bounds(tmp_path, tiny_model_bytes):
    """The header mutation fuzzer, through the whole model loader (config, RoPE table, every
    tensor's shape) instead of the file reader alone."""
    rng = random.Random(20261206)
    header_end = tiny_model_bytes.index(b"token_embd.weight") + 400  # inside the tensor infos
    cases = []
    for i in range(60):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(mutate(tiny_model_bytes, rng, header_end))
        cases.append({"kind": "model", "path": str(path)})
    results = run_bounded(tmp_path, cases)
    failed = [r for r in results if r["outcome"] == "failed"]
    assert not failed, failed[:3]
    assert {r["outcome"] for r in results} == {"ok", "refused"}  # both paths exercised
    assert max(r["seconds"] for r in results) < CASE_LIMIT_SECONDS


def _template_gguf(path: Path, template: str) -> None:
    kvs = [kv for kv in B.tiny_kvs() if kv[0] != "general.alignment"]
    kvs.append(("tokenizer.chat_template", B.STRING, template))
    B.build(kvs, B.tiny_tensors()).write(path)


def _random_template(rng: random.Random) -> str:
    """A template assembled from the pieces that make unbounded work, with random sizes."""
    def n() -> int:
        return rng.choice([0, 3, 1000, 100000, 10**9, 2**63])

    pieces = [
        lambda: f"{{% for a in range({n()}) %}}{{% for b in range({n()}) %}}x{{% endfor %}}"
                "{% endfor %}",
        lambda: f"{{{{ {n()} ** {n()} ** {n()} }}}}",
        lambda: f"{{{{ 'ab' * {n()} }}}}",
        lambda: f"{{{{ ([1, 2] * {n()}) | join }}}}",
        lambda: f"{{{{ 'x' | center({n()}) }}}}",
        lambda: f"{{{{ ('y' * {n()}).replace('', 'zz') }}}}",
        lambda: f"{{{{ '%0{n()}d' % 1 }}}}",
        lambda: "{% macro f(k) %}{{ f(k) }}{{ f(k) }}{% endmacro %}{{ f(1) }}",
        lambda: f"{{% set ns = namespace(s='q') %}}{{% for i in range({rng.randint(0, 80)}) %}}"
                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        lambda: "{{ messages | tojson }}{{ lipsum(5) }}",
        lambda: rng.choice(["{% include 'a' %}", "{% extends 'b' %}", "{% import 'c' as d %}"]),
        lambda: "{{ messages[0].content }}",
    ]
    return "".join(rng.choice(pieces)() for _ in range(rng.randint(1, 3)))


def test_chat_templates_in_model_files_are_bounded(tmp_path):
    """Hostile and random templates in a GGUF: each renders or is refused with ChatTemplateError,
    under 2 GB and 10 s (the render's own deadline is 2 s; the random ones run with 0.5 s)."""
    from test_chat_template import HOSTILE

    rng = random.Random(6)
    cases = []
    for i, source in enumerate(list(HOSTILE.values()) + [_random_template(rng) for _ in range(40)]):
        path = tmp_path / f"t{i}.gguf"
        _template_gguf(path, source)
        case = {"kind": "template", "path": str(path)}
        if i >= len(HOSTILE):
            case["max_seconds"] = 0.5
        cases.append(case)
    results = run_bounded(tmp_path, cases)
    failed = [r for r in results if r["outcome"] == "failed"]
    assert not failed, failed[:3]
    assert all(r["outcome"] == "refused" for r in results[:len(HOSTILE)]), results[:len(HOSTILE)]
    assert max(r["seconds"] for r in results) < CASE_LIMIT_SECONDS
