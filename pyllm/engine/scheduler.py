"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step has a token budget. Running sequences go first, oldest first: a decoding sequence
needs one token, a sequence part-way through a long prompt gets the next chunk (chunked
prefill). What budget is left admits waiting sequences, oldest first, each taking whatever its
prompt prefix already has in the cache (prefix sharing through the block manager), or will have
once this step's earlier prefill chunks are computed, and a chunk of the rest. Finished
sequences leave at once, so new ones join at every step. When the cache is full, the newest
running sequence is preempted: its blocks are freed and it goes back to the front of the queue,
to be recomputed (prompt and output so far) when there is room again.

The scheduler also owns every sequence's bookkeeping after a step (as vLLM's
`update_from_output`): `after_forward` records the computed tokens (blocks marked computed,
n > 1 siblings forked once their prompt is cached) and says which sequences are sampled from
which logits row; `update_from_output` appends the sampled tokens, advances structured-output
matchers, and frees finished sequences. `LLMEngine.step` only carries data between
`schedule()`, the model, the sampler and these two.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pyllm.engine.block_manager import BlockManager
from pyllm.engine.sequence import SeqStatus, Sequence
from pyllm.generation import StreamEvent, TokenLogprob


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 512  # tokens computed per step (the prefill chunk bound)


@dataclass
class ScheduledBatch:
    """One step's work: `(sequence, number of its tokens to compute)` in order, plus the
    copy-on-write block copies to make in the cache before the step runs."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)


class Scheduler:
    def __init__(self, blocks: BlockManager, config: SchedulerConfig | None = None) -> None:
        self.blocks = blocks
        self.config = config or SchedulerConfig()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        self.blocks.begin_step()
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            if not self._make_room(seq, batch):
                continue
            n = min(seq.num_tokens - seq.cached, budget)
            if n > 0:
                batch.items.append((seq, n))
                budget -= n
                self._expect(seq, n)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq.tokens):
                break  # wait for running sequences to finish and free their blocks
            self.waiting.popleft()
            seq.cached = self.blocks.allocate(seq.seq_id, seq.tokens)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_tokens - seq.cached, budget)
            batch.items.append((seq, n))
            budget -= n
            self._expect(seq, n)
        return batch

    def _expect(self, seq: Sequence, n: int) -> None:
        """A prefill chunk's full blocks become shareable with prompts admitted after it in
        this step (a decode step's token fills no block worth sharing this way)."""
        if n > 1 and self.waiting:
            self.blocks.expect_computed(seq.seq_id, seq.cached + n)

    def _make_room(self, seq: Sequence, batch: ScheduledBatch) -> bool:
        """Give `seq` slots for its tokens (the one sampled last step), preempting the newest
        running sequences while the cache is full. False when `seq` itself was preempted."""
        have, p = self.blocks.num_tokens(seq.seq_id), len(seq.prompt)
        # seq.tokens[have:] without copying the whole sequence (usually the one sampled token)
        missing = seq.out[have - p :] if have >= p else seq.tokens[have:]
        if not missing:
            return True
        while (copies := self.blocks.try_append(seq.seq_id, missing)) is None:
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        batch.copies.extend(copies)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and queue it (first) for recomputation."""
        self.blocks.free(seq.seq_id)
        self.running.remove(seq)
        seq.cached = 0
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """A sequence is done (or aborted): it leaves the batch and frees its blocks; its full
        blocks stay in the prefix cache until they are needed for something else."""
        self.blocks.free(seq.seq_id)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED

    def add_running(self, seq: Sequence) -> None:
        """A forked sibling joins the batch directly (its blocks are already shared)."""
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    # ------------------------------------------------------------------ after a step

    def after_forward(self, batch: ScheduledBatch) -> tuple[list[Sequence], list[int]]:
        """The step's forward ran: every scheduled token's K/V is in the cache. Returns the
        sequences to sample now (those whose tokens are all cached, each followed by the
        siblings that fork from it here, n > 1) and the logits row each reads (the index of
        its parent among the sampled parents)."""
        sampled: list[Sequence] = []
        row_of: list[int] = []
        for s, n in batch.items:
            s.cached += n
            self.blocks.mark_computed(s.seq_id, s.cached)
        ready = [s for s, _ in batch.items if s.cached == s.num_tokens]  # not mid-prompt
        for row, s in enumerate(ready):
            sampled.append(s)
            row_of.append(row)
            for child in s.children:  # siblings share the prompt's blocks
                self.blocks.fork(s.seq_id, child.seq_id)
                child.cached = s.cached
                self.add_running(child)
                sampled.append(child)
                row_of.append(row)
            s.children = []
        return sampled, row_of

    def update_from_output(
        self, seqs: list[Sequence], token_ids: list[int], logprobs: list[TokenLogprob]
    ) -> list[StreamEvent]:
        """Append each sequence's sampled token; a sequence that stops (EOS or stop ids, stop
        strings, lengths, a complete structured-output constraint) finishes and frees its
        blocks. Returns the events to stream (new text, or the end)."""
        events = []
        for s, tok, lp in zip(seqs, token_ids, logprobs):
            done = False
            if s.constraint is not None and tok not in s.stop_ids:
                # The matcher follows the output; the sequence ends once the constraint is
                # complete (or, never expected, when the token was not one it allowed).
                done = not s.constraint.advance(tok) or s.constraint.complete
            delta = s.append(tok, lp, constraint_done=done)
            if s.done:
                self.finish(s)
            if delta or s.done:
                events.append(StreamEvent(s.request_id, s.index, delta, s.done, s.completion()))
        return events
