"""Damaged GGUF files: every truncation of a tiny valid file and a mutation fuzzer. Each case
must either load (and then every tensor must read and convert) or raise ModelFormatError, and
finish quickly: a hard timer turns a hang into a failure."""

from __future__ import annotations

import contextlib
import random
import signal
import struct
import time

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
