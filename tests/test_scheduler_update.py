"""The scheduler's bookkeeping after a step (Scheduler.after_forward, update_from_output), on a
stub tokenizer: what LLMEngine.step hands it and what it must leave behind."""

from __future__ import annotations

from pyllm.engine.block_manager import BlockManager
from pyllm.engine.scheduler import Scheduler, SchedulerConfig
from pyllm.engine.sequence import SeqStatus, Sequence
from pyllm.sampling_params import SamplingParams

EOS = 0


class LetterTokenizer:
    """Token i is the letter chr(ord('a') + i - 1); 0 is the end of text."""

    eos_ids = frozenset({EOS})

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return "".join(chr(ord("a") + i - 1) for i in ids if i != EOS)


def _seq(seq_id: int, prompt: list[int], **params) -> Sequence:
    return Sequence(
        seq_id,
        f"r{seq_id}",
        0,
        prompt,
        SamplingParams(**params),
        LetterTokenizer(),
        context_length=64,
    )


def _scheduler(num_blocks: int = 8) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, 2), SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=3)
    )


def test_after_forward_caches_the_tokens_and_samples_only_finished_prompts():
    sched = _scheduler()
    short, long = _seq(1, [1, 2]), _seq(2, [3, 4, 5, 6])
    sched.add(short)
    sched.add(long)
    batch = sched.schedule()  # budget 3: all of `short`, one token of `long`
    assert [(s.seq_id, n) for s, n in batch.items] == [(1, 2), (2, 1)]
    sampled, rows = sched.after_forward(batch)
    assert (short.cached, long.cached) == (2, 1)
    assert sched.blocks.num_computed(1) == 2 and sched.blocks.num_computed(2) == 1
    assert sampled == [short] and rows == [0]


def test_after_forward_forks_siblings_onto_their_parents_row():
    sched = _scheduler()
    first, parent = _seq(1, [1, 2]), _seq(2, [3])
    child = _seq(3, [3])
    parent.children = [child]
    sched.add(first)
    sched.add(parent)
    sampled, rows = sched.after_forward(sched.schedule())
    assert sampled == [first, parent, child] and rows == [0, 1, 1]
    assert parent.children == [] and child.cached == parent.cached == 1
    assert child.status is SeqStatus.RUNNING and child in sched.running
    assert sched.blocks.block_table(3) == sched.blocks.block_table(2)


def test_update_from_output_appends_streams_and_frees_finished_sequences():
    sched = _scheduler()
    a, b = _seq(1, [1]), _seq(2, [2], max_tokens=1)
    sched.add(a)
    sched.add(b)
    sampled, _ = sched.after_forward(sched.schedule())
    free_before = sched.blocks.num_free_blocks
    events = sched.update_from_output(sampled, [3, 4], [None, None])
    assert a.out == [3] and b.out == [4]
    assert [(e.request, e.delta, e.finished) for e in events] == [
        ("r1", "c", False),
        ("r2", "d", True),
    ]
    assert b.finish_reason == "length" and b.status is SeqStatus.FINISHED
    assert b not in sched.running and 2 not in sched.blocks
    assert sched.blocks.num_free_blocks == free_before + 1
    events = sched.update_from_output([a], [EOS], [None])
    assert a.finish_reason == "stop" and events[0].finished and not sched.has_work()
