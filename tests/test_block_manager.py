"""BlockManager: prefix sharing, reference counts, copy-on-write forks, running out of blocks.

The random test drives the manager like an engine would and simulates the cache contents (a
slot holds the token prefix its K/V depend on; blocks are copied on copy-on-write): every live
sequence must read back exactly its own prefixes through its block table, whatever was shared,
forked, freed and reused.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyllm.engine.block_manager import BlockManager, OutOfBlocksError
from pyllm.model.batch import NULL_BLOCK


def test_shared_prefix_is_stored_once():
    bm = BlockManager(num_blocks=10, block_size=4)
    prefix = list(range(100, 110))  # 2 full blocks + 2 tokens
    assert bm.allocate("a", prefix + [1, 2, 3]) == 0
    bm.mark_computed("a", 13)
    cached = bm.allocate("b", prefix + [7, 8, 9, 10, 11])
    assert cached == 8  # the two full blocks of the common prefix
    assert bm.block_table("b")[:2] == bm.block_table("a")[:2]
    assert bm.block_table("b")[2] != bm.block_table("a")[2]
    assert [bm.ref_count(b) for b in bm.block_table("a")[:2]] == [2, 2]
    assert bm.num_free_blocks == 10 - 4 - 2


def test_no_sharing_before_the_blocks_are_computed():
    bm = BlockManager(num_blocks=10, block_size=4)
    bm.allocate("a", list(range(12)))
    assert bm.allocate("b", list(range(12))) == 0
    assert set(bm.block_table("a")).isdisjoint(bm.block_table("b"))


def test_blocks_the_step_computes_are_shared_within_that_step():
    bm = BlockManager(num_blocks=12, block_size=4)
    prompt = list(range(11))  # 2 full blocks + 3 tokens
    bm.allocate("a", prompt)
    bm.expect_computed("a", 6)  # a chunk of 6 tokens: only the first block is complete
    assert bm.allocate("b", prompt + [50]) == 4
    assert bm.block_table("b")[0] == bm.block_table("a")[0]
    assert bm.block_table("b")[1] != bm.block_table("a")[1]
    bm.expect_computed("a", 11)
    assert bm.allocate("c", prompt + [60]) == 8
    assert bm.block_table("c")[:2] == bm.block_table("a")[:2]
    bm.begin_step()  # the step ran without a mark_computed for a: nothing is promised any more
    assert bm.allocate("d", prompt + [70]) == 0


def test_expectations_need_prefix_caching():
    bm = BlockManager(num_blocks=12, block_size=4, enable_prefix_caching=False)
    bm.allocate("a", list(range(9)))
    bm.expect_computed("a", 9)
    assert bm.allocate("b", list(range(9))) == 0


def test_the_last_prompt_token_is_always_computed():
    bm = BlockManager(num_blocks=10, block_size=4)
    bm.allocate("a", list(range(8)))
    bm.mark_computed("a", 8)
    assert bm.allocate("b", list(range(8))) == 4  # not 8: the logits need the last token's pass
    assert bm.allocate("c", list(range(9))) == 8


def test_a_different_earlier_block_changes_every_later_key():
    bm = BlockManager(num_blocks=10, block_size=4)
    bm.allocate("a", [1, 1, 1, 1, 5, 5, 5, 5, 9])
    bm.mark_computed("a", 9)
    assert bm.allocate("b", [2, 2, 2, 2, 5, 5, 5, 5, 9]) == 0  # same second block, other prefix


def test_ref_counts_to_zero_free_the_blocks():
    bm = BlockManager(num_blocks=6, block_size=4)
    bm.allocate("a", list(range(10)))
    bm.mark_computed("a", 10)
    bm.allocate("b", list(range(10)))
    shared = bm.block_table("a")[:2]
    bm.free("a")
    assert [bm.ref_count(b) for b in shared] == [1, 1]
    assert bm.num_free_blocks == 6 - 3
    bm.free("b")
    assert all(bm.ref_count(b) == 0 for b in range(6))
    assert bm.num_free_blocks == 6
    bm.free("b")  # unknown ids are ignored


def test_freed_prefix_blocks_are_reused_until_overwritten():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate("a", list(range(9)))
    bm.mark_computed("a", 9)
    bm.free("a")
    assert bm.allocate("b", list(range(9))) == 8  # revived from the free list
    assert bm.num_free_blocks == 1
    bm.free("b")
    bm.allocate("c", [50 + i for i in range(16)])  # takes every block: the old keys are gone
    bm.free("c")
    assert bm.allocate("d", list(range(9))) == 0


def test_out_of_blocks():
    bm = BlockManager(num_blocks=3, block_size=4)
    assert not bm.can_allocate(list(range(13)))
    with pytest.raises(OutOfBlocksError):
        bm.allocate("a", list(range(13)))
    assert bm.num_free_blocks == 3 and "a" not in bm
    bm.allocate("a", list(range(12)))
    assert not bm.can_append("a")
    with pytest.raises(OutOfBlocksError):
        bm.append("a", [1])
    assert bm.num_tokens("a") == 12
    with pytest.raises(ValueError):
        bm.allocate("b", [])


def test_fork_shares_blocks_and_copies_the_partial_one_on_write():
    bm = BlockManager(num_blocks=10, block_size=4)
    bm.allocate("p", list(range(6)))  # one full block, one partial
    full, partial = bm.block_table("p")
    bm.fork("p", "c1")
    bm.fork("p", "c2")
    assert bm.ref_count(full) == 3 and bm.ref_count(partial) == 3
    copies = bm.append("c1", [42])
    assert len(copies) == 1 and copies[0][0] == partial
    new = copies[0][1]
    assert bm.block_table("c1") == [full, new]
    assert bm.ref_count(partial) == 2 and bm.ref_count(new) == 1
    assert bm.append("c2", [43]) == [(partial, bm.block_table("c2")[1])]
    assert bm.append("p", [44]) == []  # the last holder writes in place
    assert bm.block_table("p") == [full, partial]
    assert bm.ref_count(full) == 3
    bm.append("c1", [1, 2, 3])  # fills the copy and opens a block of its own
    assert len(bm.block_table("c1")) == 3


def test_batch_helpers():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.allocate("a", list(range(6)))
    bm.allocate("b", list(range(1)))
    tables = bm.block_tables(["a", "b"])
    assert tables.dtype == torch.int32 and tables.shape == (2, 2)
    assert tables[0].tolist() == bm.block_table("a") and tables[1, 0] == bm.block_table("b")[0]
    assert bm.block_tables(["a"], width=5).shape == (1, 5)
    with pytest.raises(ValueError):
        bm.block_tables(["a"], width=1)
    slots = bm.slot_mapping([("a", 4, 6), ("b", 0, 1)])
    assert slots.dtype == torch.int64
    assert slots.tolist() == [bm.slot("a", 4), bm.slot("a", 5), bm.slot("b", 0)]
    a0, a1 = bm.block_table("a")
    assert bm.slot("a", 5) == a1 * 4 + 1 and bm.slot("a", 0) == a0 * 4
    with pytest.raises(IndexError):
        bm.slot_mapping([("b", 0, 5)])


def test_the_null_block_is_never_handed_out_and_pads_tables():
    """Block 0 (NULL_BLOCK) is reserved: a full pool gives sequences every other block, and
    block tables are padded with it, so padding never names a block a sequence owns."""
    bm = BlockManager(num_blocks=3, block_size=2)
    assert bm.pool_blocks == 4 and bm.num_free_blocks == 3
    bm.allocate("a", [1, 2, 3, 4])
    bm.allocate("b", [5])
    assert sorted(bm.block_table("a") + bm.block_table("b")) == [1, 2, 3]
    assert not bm.can_allocate([6])
    tables = bm.block_tables(["a", "b"], width=3)
    assert tables[1, 1:].tolist() == [NULL_BLOCK, NULL_BLOCK] and tables[0, 2] == NULL_BLOCK
    assert NULL_BLOCK not in bm.block_table("a") + bm.block_table("b")


# ------------------------------------------------------------------ simulated engine

PREFIXES = [[7] * 9, list(range(20, 33)), [7] * 4 + [8] * 6]


@st.composite
def prompts(draw):
    base = draw(st.sampled_from(PREFIXES))
    tokens = base + draw(st.lists(st.integers(0, 3), max_size=10))
    return tokens[: draw(st.integers(1, len(tokens)))]


ops = st.one_of(
    st.tuples(st.just("allocate"), prompts(), st.booleans()),
    st.tuples(st.just("append"), st.integers(0, 50), st.lists(st.integers(0, 3), min_size=1, max_size=6),
              st.booleans()),
    st.tuples(st.just("fork"), st.integers(0, 50)),
    st.tuples(st.just("free"), st.integers(0, 50)),
    # the scheduler's promise that this step computes a sequence's tokens, and the next step
    st.tuples(st.just("expect"), st.integers(0, 50)),
    st.tuples(st.just("step")),
)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4]), st.integers(4, 24), st.lists(ops, max_size=40))
@example(4, 10, [("allocate", [7] * 5, True), ("fork", 0), ("append", 0, [1], True),
                 ("append", 1, [2], True), ("append", 0, [3, 3, 3, 3], False), ("free", 0),
                 ("allocate", [7] * 9, True), ("append", 1, [2], True)])
@example(2, 6, [("allocate", [7] * 9, True), ("allocate", [7] * 4 + [8] * 6, True), ("free", 0),
                ("allocate", [7] * 9, True), ("fork", 1), ("append", 2, [0, 1], True)])
def test_every_sequence_reads_back_its_own_tokens(block_size, num_blocks, script):
    bm = BlockManager(num_blocks, block_size)
    # A slot's K/V depend on its token and every token before it: model them as that prefix.
    cache: list[tuple | None] = [None] * (bm.pool_blocks * block_size)
    live: dict[int, list[int]] = {}
    next_id = 0

    def write(seq, start, tokens):
        for p in range(start, len(tokens)):
            cache[bm.slot(seq, p)] = tuple(tokens[: p + 1])

    def pick(i):
        return sorted(live)[i % len(live)] if live else None

    for op in script:
        if op[0] == "allocate":
            _, prompt, computed = op
            if bm.can_allocate(prompt):
                cached = bm.allocate(next_id, prompt)
                assert cached % block_size == 0 and cached < len(prompt)
                write(next_id, cached, prompt)
                if computed:
                    bm.mark_computed(next_id, len(prompt))
                live[next_id] = list(prompt)
            else:
                free_before = bm.num_free_blocks
                with pytest.raises(OutOfBlocksError):
                    bm.allocate(next_id, prompt)
                assert bm.num_free_blocks == free_before
            next_id += 1
        elif op[0] == "append" and live:
            _, i, tokens, computed = op
            seq = pick(i)
            if bm.can_append(seq, len(tokens)):
                for src, dst in bm.append(seq, tokens):
                    cache[dst * block_size:(dst + 1) * block_size] = cache[src * block_size:(src + 1) * block_size]
                write(seq, len(live[seq]), live[seq] + tokens)
                live[seq] += tokens
                if computed:
                    bm.mark_computed(seq, len(live[seq]))
            else:
                with pytest.raises(OutOfBlocksError):
                    bm.append(seq, tokens)
        elif op[0] == "fork" and live:
            parent = pick(op[1])
            bm.fork(parent, next_id)
            live[next_id] = list(live[parent])
            next_id += 1
        elif op[0] == "free" and live:
            seq = pick(op[1])
            bm.free(seq)
            del live[seq]
        elif op[0] == "expect" and live:  # (the simulated cache is written at once)
            seq = pick(op[1])
            bm.expect_computed(seq, len(live[seq]))
        elif op[0] == "step":
            bm.begin_step()

        # Invariants: contents, reference counts, free list.
        holders = [0] * bm.pool_blocks
        for seq, tokens in live.items():
            assert [cache[bm.slot(seq, p)] for p in range(len(tokens))] == [
                tuple(tokens[: p + 1]) for p in range(len(tokens))]
            for b in bm.block_table(seq):
                holders[b] += 1
        assert [bm.ref_count(b) for b in range(bm.pool_blocks)] == holders
        assert holders[NULL_BLOCK] == 0  # the null block is never handed out
        assert bm.num_free_blocks == holders.count(0) - 1
