"""paged_attention: every CPU ISA path (and CUDA when present) against the reference.

Caches start filled with NaN, block tables point at scattered blocks and their unused entries
hold garbage, so a kernel that reads a slot outside a sequence's context (or a block it does not
own) produces NaN and fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyllm.ops as ops
from pyllm import _C
from pyllm.ops import attention as A
from pyllm.ops import kv_cache as K

ISAS = [isa for isa in ("baseline", "avx2", "avx512")
        if ("baseline", "avx2", "avx512").index(isa) <= ("baseline", "avx2", "avx512").index(_C.detected_isa())]


@dataclass
class Case:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    query_start: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    scale: float
    sliding_window: int

    def args(self):
        return (self.q, self.k_cache, self.v_cache, self.query_start, self.context_lens,
                self.block_tables, self.scale, self.sliding_window)

    def reference64(self) -> torch.Tensor:
        """The reference evaluated in float64 on the same (possibly f16/bf16) values."""
        return A.paged_attention_ref(self.q.double(), self.k_cache.double(), self.v_cache.double(),
                                     self.query_start, self.context_lens, self.block_tables,
                                     self.scale, self.sliding_window)


def make_case(seqs: list[tuple[int, int]], hq: int, hkv: int, d: int, block_size: int, *,
              cache_dtype=torch.float32, q_dtype=torch.float32, sliding_window: int = 0,
              seed: int = 0, spare_blocks: int = 3, device: str = "cpu") -> Case:
    """seqs: (q_len, context_len) per sequence. K/V for every context position are written into
    a NaN-filled pool through write_kv_cache_, at blocks in a random order."""
    g = torch.Generator().manual_seed(seed)
    needed = [(ctx + block_size - 1) // block_size for _, ctx in seqs]
    num_blocks = sum(needed) + spare_blocks
    max_blocks = max(needed + [1]) + 1  # one spare column of garbage
    k_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=cache_dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    order = torch.randperm(num_blocks, generator=g)
    # Unused block-table entries hold garbage (out of range, negative): never read.
    block_tables = torch.randint(-1000, 1000, (len(seqs), max_blocks), generator=g, dtype=torch.int32)
    used = 0
    for b, ((_, ctx), n) in enumerate(zip(seqs, needed)):
        block_tables[b, :n] = order[used:used + n].to(torch.int32)
        used += n
        pos = torch.arange(ctx)
        slots = block_tables[b].long()[pos // block_size] * block_size + pos % block_size
        K.write_kv_cache_(torch.randn(ctx, hkv, d, generator=g), torch.randn(ctx, hkv, d, generator=g),
                          k_cache, v_cache, slots)
    q_lens = [q_len for q_len, _ in seqs]
    query_start = torch.tensor([0] + torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist(),
                               dtype=torch.int32)
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(q_dtype)
    context_lens = torch.tensor([ctx for _, ctx in seqs], dtype=torch.int32)
    case = Case(q, k_cache, v_cache, query_start, context_lens, block_tables, 1.0 / math.sqrt(d),
                sliding_window)
    if device != "cpu":
        for name in ("q", "k_cache", "v_cache", "query_start", "context_lens", "block_tables"):
            setattr(case, name, getattr(case, name).to(device))
    return case


def tolerance(dtype: torch.dtype) -> dict:
    return {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}[dtype]


def check_all_isas(case: Case) -> None:
    """Run the op on every ISA path this CPU has (restoring the setting after)."""
    expected = case.reference64()
    before = _C.cpu_isa()
    try:
        for isa in ISAS:
            _C.set_cpu_isa(isa)
            out = A.paged_attention(*case.args())
            assert out.dtype == case.q.dtype and out.shape == case.q.shape
            assert not out.isnan().any(), f"NaN leaked into the output ({isa})"
            torch.testing.assert_close(out.double(), expected, **tolerance(case.q.dtype),
                                       msg=lambda m: f"[{isa}] {m}")
    finally:
        _C.set_cpu_isa(before)


# ------------------------------------------------------------------ strategies

@st.composite
def sequence(draw, block_size: int) -> tuple[int, int]:
    kind = draw(st.sampled_from(["small", "small", "small", "boundary", "boundary", "large"]))
    if kind == "small":
        ctx = draw(st.integers(1, 48))
    elif kind == "boundary":  # context_len = k * block_size, +-1
        ctx = max(1, draw(st.integers(1, 6)) * block_size + draw(st.sampled_from([-1, 0, 1])))
    else:
        ctx = draw(st.integers(257, 4096))
    mode = draw(st.sampled_from(["decode", "prefill", "chunk"]))
    q_len = {"decode": 1, "prefill": ctx}.get(mode) or draw(st.integers(1, ctx))
    return min(q_len, max(1, 60_000 // ctx)), ctx  # bound the reference's score matrix


@st.composite
def cases(draw):
    block_size = draw(st.sampled_from([1, 4, 16, 16, 32, 64]))
    hkv = draw(st.sampled_from([1, 2, 3]))
    ratio = draw(st.sampled_from([1, 3, 8]))
    d = draw(st.sampled_from([64, 64, 128, 4, 8, 20, 33]))
    seqs = draw(st.lists(sequence(block_size), min_size=1, max_size=4))
    cache_dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16]))
    q_dtype = draw(st.sampled_from([torch.float32, torch.float32, cache_dtype]))
    window = draw(st.sampled_from([0, 0, 0, 1, 5, 64, 300]))
    return make_case(seqs, hkv * ratio, hkv, d, block_size, cache_dtype=cache_dtype, q_dtype=q_dtype,
                     sliding_window=window, seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_matches_reference(case):
    check_all_isas(case)


# ------------------------------------------------------------------ targeted cases

@pytest.mark.parametrize("ctx", [15, 16, 17, 63, 64, 65])
def test_block_boundaries_prefill_and_decode(ctx):
    check_all_isas(make_case([(ctx, ctx), (1, ctx), (3, ctx)], 9, 3, 64, 16, seed=ctx))


def test_long_decode_is_split_and_merged():
    """Decode of a 4096-token context: with several threads the key range is split and merged."""
    threads = _C.get_num_threads()
    try:
        for n in (1, 2, 3, 7):
            _C.set_num_threads(n)
            check_all_isas(make_case([(1, 4096)], 9, 3, 64, 16, seed=n))
            check_all_isas(make_case([(1, 4096)], 9, 3, 64, 16, seed=n, cache_dtype=torch.float16))
            check_all_isas(make_case([(1, 2100)], 9, 3, 64, 16, seed=n, cache_dtype=torch.bfloat16))
            check_all_isas(make_case([(2, 3001), (1, 700)], 8, 1, 128, 16, seed=n, sliding_window=900))
    finally:
        _C.set_num_threads(threads)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
@pytest.mark.parametrize("d,block_size", [(64, 16), (20, 32), (33, 4), (128, 64)])
def test_every_row_count_of_a_task(group, d, block_size, cache_dtype):
    """The AVX-512 path blocks a task's rows (queries x group heads, up to 48) differently for few
    rows (per-key partial sums) and many (a transposed K tile), with remainder blocks of every
    size; tiles of 32 keys are two halves of 16, short tiles reuse their last key's row, head
    dims that are not a multiple of 16 end in masked lanes. q_len 1..7 with GQA groups 1, 3 and 8
    gives tasks of 1-7 rows and multiples of 3 and 8 up to 48 (full 8-row blocks plus every
    remainder), at a few context lengths, with and without a sliding window. f16/bf16 caches go
    through the same kernels reading half-precision K/V (widened in registers, masked tails
    read only their own lanes: the NaN fill of the spare slots would show otherwise)."""
    for q_len in range(1, 8):
        seqs = [(q_len, q_len), (q_len, 37), (q_len, 70 + q_len)]
        check_all_isas(make_case(seqs, 2 * group, 2, d, block_size, cache_dtype=cache_dtype, seed=q_len))
        check_all_isas(make_case(seqs, 2 * group, 2, d, block_size, cache_dtype=cache_dtype, seed=q_len,
                                 sliding_window=9))


def test_smollm2_prefill_256():
    check_all_isas(make_case([(256, 256)], 9, 3, 64, 16, seed=1))


def test_mixed_batch_with_sliding_window():
    seqs = [(40, 40), (1, 513), (17, 200), (1, 1), (5, 48)]
    for window in (1, 2, 16, 100):
        check_all_isas(make_case(seqs, 12, 4, 32, 16, sliding_window=window, seed=window))


def test_empty_batch_and_empty_sequences():
    case = make_case([(0, 5), (2, 7), (0, 0)], 4, 2, 8, 4)
    torch.testing.assert_close(A.paged_attention(*case.args()).double(), case.reference64())
    empty = A.paged_attention(torch.empty(0, 4, 8), case.k_cache, case.v_cache,
                              torch.zeros(1, dtype=torch.int32), torch.empty(0, dtype=torch.int32),
                              torch.empty(0, 3, dtype=torch.int32), 0.5, 0)
    assert empty.shape == (0, 4, 8)


def test_validated_path_and_out_buffer():
    case = make_case([(7, 30), (1, 90)], 6, 2, 16, 8, seed=3)
    A.check_attention_metadata(*case.args())
    out = torch.empty_like(case.q)
    got = A.paged_attention(*case.args(), validated=True, out=out)
    assert got is out
    torch.testing.assert_close(out, A.paged_attention(*case.args()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="out"):
        A.paged_attention(*case.args(), validated=True, out=torch.empty_like(case.q).double())
    with pytest.raises(ValueError, match="out"):
        A.paged_attention(*case.args(), validated=True, out=out[:-1])
    # The hot path skips the value checks, not the cheap structural ones.
    bad = list(case.args())
    bad[5] = case.block_tables.long()
    with pytest.raises(ValueError, match="int32"):
        A.paged_attention(*bad, validated=True)
    with pytest.raises(ValueError, match="fit"):
        A.paged_attention(case.q[..., :8], *case.args()[1:], validated=True)


def test_opcheck():
    for case in (make_case([(5, 9), (1, 33)], 6, 2, 16, 8, seed=4),
                 make_case([(3, 3)], 4, 4, 8, 4, cache_dtype=torch.float16, seed=5)):
        torch.library.opcheck(torch.ops.pyllm.paged_attention.default, case.args())


# ------------------------------------------------------------------ bad input

def _bad_inputs():
    def mutate(**changes):
        def build():
            case = make_case([(3, 10), (1, 5)], 4, 2, 8, 4, seed=9)
            for name, fn in changes.items():
                setattr(case, name, fn(case))
            return case
        return build

    i32 = torch.int32
    return [
        ("q", mutate(q=lambda c: c.q.double())),
        ("q", mutate(q=lambda c: c.q[0])),
        ("k_cache", mutate(k_cache=lambda c: c.k_cache.to(torch.int32))),
        ("v_cache", mutate(v_cache=lambda c: c.v_cache[:-1])),
        ("v_cache", mutate(v_cache=lambda c: c.v_cache.half())),
        ("k_cache", mutate(k_cache=lambda c: c.k_cache.transpose(0, 1).contiguous().transpose(0, 1))),
        ("head dim", mutate(q=lambda c: c.q[..., :4])),
        ("heads", mutate(q=lambda c: torch.randn(4, 3, 8))),
        ("query_start", mutate(query_start=lambda c: c.query_start.long())),
        ("context_lens", mutate(context_lens=lambda c: c.context_lens.long())),
        ("block_tables", mutate(block_tables=lambda c: c.block_tables.long())),
        ("block_tables", mutate(block_tables=lambda c: c.block_tables[0])),
        ("query_start", mutate(query_start=lambda c: c.query_start[:-1])),
        ("query_start", mutate(query_start=lambda c: torch.tensor([1, 3, 4], dtype=i32))),
        ("query_start", mutate(query_start=lambda c: torch.tensor([0, 3, 5], dtype=i32))),
        ("query_start", mutate(query_start=lambda c: torch.tensor([0, 5, 4], dtype=i32))),
        ("context_lens", mutate(context_lens=lambda c: torch.tensor([2, 5], dtype=i32))),
        ("context_lens", mutate(context_lens=lambda c: torch.tensor([10, 400], dtype=i32))),
        ("block_tables", mutate(block_tables=lambda c: c.block_tables.index_fill(1, torch.tensor([0]), -1))),
        ("block_tables", mutate(block_tables=lambda c: c.block_tables.index_fill(1, torch.tensor([1]),
                                                                                 c.k_cache.shape[0]))),
        ("sliding_window", mutate(sliding_window=lambda c: -1)),
        ("scale", mutate(scale=lambda c: float("nan"))),
        ("device", mutate(block_tables=lambda c: c.block_tables.to("meta"))),
    ]


@pytest.mark.parametrize("name,build", _bad_inputs(), ids=[f"{i}-{n}" for i, (n, _) in enumerate(_bad_inputs())])
def test_bad_input_raises_value_error(name, build):
    case = build()
    with pytest.raises(ValueError, match=name):
        A.paged_attention(*case.args())
    with pytest.raises(ValueError, match=name):
        A.check_attention_metadata(*case.args())


# ------------------------------------------------------------------ CUDA

CUDA_FAMILIES = ["general", "tuned"]


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and bool(getattr(_C, "has_cuda", False))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", CUDA_FAMILIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_cuda_matches_reference(family, case):
    if not _cuda_ready():
        pytest.skip("pyllm was built without CUDA kernels")
    expected = case.reference64()
    for name in ("q", "k_cache", "v_cache", "query_start", "context_lens", "block_tables"):
        setattr(case, name, getattr(case, name).cuda())
    with ops.using_cuda_kernels(family):
        out = A.paged_attention(*case.args())
    assert not out.isnan().any()
    torch.testing.assert_close(out.double().cpu(), expected, **tolerance(case.q.dtype))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", CUDA_FAMILIES)
def test_cuda_long_decode_split_k(family):
    if not _cuda_ready():
        pytest.skip("pyllm was built without CUDA kernels")
    for seqs in ([(1, 4096)], [(1, 4096), (1, 1), (2, 3000), (64, 64)]):
        case = make_case(seqs, 9, 3, 64, 16, seed=7)
        expected = case.reference64()
        case = make_case(seqs, 9, 3, 64, 16, seed=7, device="cuda")
        with ops.using_cuda_kernels(family):
            torch.testing.assert_close(A.paged_attention(*case.args()).double().cpu(), expected,
                                       rtol=1e-5, atol=1e-5)
            torch.library.opcheck(torch.ops.pyllm.paged_attention.default, case.args())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_tuned_equals_general_on_a_decode_batch(cache_dtype):
    """SmolLM2's shape (9 query heads on 3 KV heads of 64 dims), 64 sequences of mixed lengths
    decoding one token each: the two kernel families agree, with splits and without."""
    if not _cuda_ready():
        pytest.skip("pyllm was built without CUDA kernels")
    gen = torch.Generator().manual_seed(11)
    for lengths in (torch.randint(1, 300, (64,), generator=gen).tolist(), [1000] * 4 + [3, 17]):
        case = make_case([(1, n) for n in lengths], 9, 3, 64, 16, seed=len(lengths), device="cuda",
                         cache_dtype=cache_dtype)
        outs = {}
        for family in CUDA_FAMILIES:
            with ops.using_cuda_kernels(family):
                outs[family] = A.paged_attention(*case.args())
        torch.testing.assert_close(outs["tuned"], outs["general"], rtol=1e-5, atol=1e-5)
