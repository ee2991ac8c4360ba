"""The paged KV-cache's bookkeeping: which cache blocks each sequence owns.

The cache is a pool of `num_blocks` blocks of `block_size` token slots (one pool per layer, all
indexed alike), plus the null block (`NULL_BLOCK`, block 0, pyllm/model/batch.py): it is never
handed out, so the padding of block tables (and of a CUDA graph's padding rows) reads a block no
sequence owns; the pool has `pool_blocks` = `num_blocks` + 1 blocks and sequences get
1..num_blocks. A sequence's tokens live in a list of blocks, its *block table*; token at position
p sits in slot `table[p // block_size] * block_size + p % block_size`.

- **Free list and reference counts.** A block is owned by every sequence whose table holds it;
  when its count drops to zero it goes back to the free list (least recently freed is reused
  first).
- **Prefix sharing.** A full block whose K/V have been computed is registered under a hash of its
  tokens and of every token before it (a chain: each block's key digests its parent's key and its
  own tokens), so two prompts that start alike share the blocks of their common prefix: `allocate`
  finds them and the engine prefills only the rest. A freed block keeps its key until the block is
  handed out again, so a later request (the next chat turn) can still reuse it.
- **Fork with copy-on-write** (n > 1 samples of one prompt): the child shares every block of the
  parent. Full blocks are never written again, so sharing them is free; the last, partial block is
  shared until one of them appends to it, and that one gets a private copy: `append` returns the
  `(src, dst)` block pairs the engine must copy (in every layer) before writing.

A block is registered for sharing once the engine says its K/V are in the cache
(`mark_computed`), or, for the step being scheduled, once the scheduler says the step computes
all of its tokens (`expect_computed`): the model writes every token's K/V of a layer before any
of that layer's attention reads them, so prompts that arrive together and start alike have their
common prefix computed once, by the first of them, in the same step. Otherwise a prompt gets
blocks of its own, so no sequence ever reads a block that is still waiting for its prefill chunk.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from pyllm.model.batch import NULL_BLOCK

SeqId = Hashable


class OutOfBlocksError(RuntimeError):
    """The pool has too few free blocks for the request (check `can_allocate` / `can_append`)."""


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The prefix-cache key of a full block: a digest of its parent's key and its own tokens."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens))
    return h.digest()


@dataclass
class _Seq:
    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens that have (or will get) a slot
    keys: list[bytes] = field(default_factory=list)  # keys of the leading full blocks
    num_computed: int = 0  # tokens whose K/V are in the cache
    # (full blocks, BlockManager._drops) when mark_computed last registered this sequence's
    # blocks: while both are unchanged another pass would register nothing (see mark_computed)
    scanned: tuple[int, int] = (-1, -1)


class BlockManager:
    """Allocates cache blocks to sequences; see the module docstring."""

    def __init__(
        self, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks  # blocks sequences may get
        self.pool_blocks = num_blocks + 1  # the cache's blocks: the null block and those
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * self.pool_blocks
        self._free: OrderedDict[int, None] = OrderedDict(
            (b, None) for b in range(self.pool_blocks) if b != NULL_BLOCK
        )
        self._cached: dict[bytes, int] = {}  # key -> block holding those tokens' K/V
        self._expected: dict[bytes, int] = {}  # key -> block the step being scheduled fills
        self._key_of: dict[int, bytes] = {}  # the reverse, for blocks registered in _cached
        self._seqs: dict[SeqId, _Seq] = {}
        self._drops = 0  # how many times entries left _cached / _key_of (evictions)

    # ---------------------------------------------------------------- queries

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (some may still hold a reusable cached prefix)."""
        return len(self._free)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def __contains__(self, seq_id: SeqId) -> bool:
        return seq_id in self._seqs

    def block_table(self, seq_id: SeqId) -> list[int]:
        return list(self._seqs[seq_id].blocks)

    def num_tokens(self, seq_id: SeqId) -> int:
        return len(self._seqs[seq_id].tokens)

    def num_computed(self, seq_id: SeqId) -> int:
        return self._seqs[seq_id].num_computed

    def slot(self, seq_id: SeqId, pos: int) -> int:
        """The cache slot of token `pos` of a sequence."""
        seq = self._seqs[seq_id]
        if not 0 <= pos < len(seq.blocks) * self.block_size:
            raise IndexError(f"position {pos} is outside sequence {seq_id!r}'s blocks")
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    # ---------------------------------------------------------------- allocation

    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _prefix_hits(self, token_ids: Sequence[int]) -> tuple[list[int], list[bytes]]:
        """Cached blocks matching the prompt's leading full blocks, stopping at the first miss.

        The block holding the last prompt token is never reused, so the engine always computes
        at least that token (its logits start the generation).
        """
        hits: list[int] = []
        keys: list[bytes] = []
        parent = b""
        bs = self.block_size
        for i in range((len(token_ids) - 1) // bs if token_ids else 0):
            key = block_key(parent, token_ids[i * bs : (i + 1) * bs])
            keys.append(key)
            parent = key
            if not self.enable_prefix_caching or len(keys) != len(hits) + 1:
                continue
            block = self._cached.get(key)
            if block is None:
                block = self._expected.get(key)
            if block is not None:
                hits.append(block)
        return hits, keys

    def _needed_free(self, token_ids: Sequence[int]) -> int:
        hits, _ = self._prefix_hits(token_ids)
        revived = sum(1 for b in hits if self._ref[b] == 0)  # cached but free: taken off the list
        return self._blocks_for(len(token_ids)) - len(hits) + revived

    def can_allocate(self, token_ids: Sequence[int], *, watermark: int = 0) -> bool:
        """Whether `allocate(token_ids)` would succeed with `watermark` blocks still free after."""
        return self._needed_free(token_ids) + watermark <= len(self._free)

    def _take_free(self) -> int:
        block, _ = self._free.popitem(last=False)
        key = self._key_of.pop(block, None)  # its old contents are about to be overwritten
        if key is not None:
            self._drops += 1
            if self._cached.get(key) == block:
                del self._cached[key]
        self._ref[block] = 1
        return block

    def _hold(self, block: int) -> None:
        if self._ref[block] == 0:
            del self._free[block]
        self._ref[block] += 1

    def allocate(self, seq_id: SeqId, token_ids: Sequence[int]) -> int:
        """Give a new sequence blocks for its prompt; returns how many leading tokens are already
        in the cache (shared prefix blocks), which the engine need not prefill."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        if not token_ids:
            raise ValueError("a sequence needs at least one token")
        if self._needed_free(token_ids) > len(self._free):
            raise OutOfBlocksError(
                f"{len(token_ids)} tokens need {self._needed_free(token_ids)} free "
                f"blocks, {len(self._free)} are free"
            )
        hits, keys = self._prefix_hits(token_ids)
        for block in hits:
            self._hold(block)
        blocks = hits + [
            self._take_free() for _ in range(self._blocks_for(len(token_ids)) - len(hits))
        ]
        cached = len(hits) * self.block_size
        self._seqs[seq_id] = _Seq(
            blocks=blocks, tokens=list(token_ids), keys=keys, num_computed=cached
        )
        return cached

    def can_append(self, seq_id: SeqId, num_tokens: int = 1) -> bool:
        """Whether `append(seq_id, <num_tokens tokens>)` would succeed."""
        return self._append_cost(self._seqs[seq_id], num_tokens) <= len(self._free)

    def _append_cost(self, seq: _Seq, num_tokens: int) -> int:
        new_blocks = self._blocks_for(len(seq.tokens) + num_tokens) - len(seq.blocks)
        cow = 1 if self._last_block_shared(seq) and num_tokens > 0 else 0
        return new_blocks + cow

    def _last_block_shared(self, seq: _Seq) -> bool:
        """The last block is partial (so the next token goes into it) and someone else holds it."""
        return (
            len(seq.tokens) % self.block_size != 0
            and bool(seq.blocks)
            and self._ref[seq.blocks[-1]] > 1
        )

    def append(self, seq_id: SeqId, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        """Make room for more tokens of a sequence (a decoded token, a prefill chunk of a new
        turn); returns the copy-on-write `(src, dst)` block copies to do before writing them."""
        seq = self._seqs[seq_id]
        cost = self._append_cost(seq, len(token_ids))
        if cost > len(self._free):
            raise OutOfBlocksError(
                f"sequence {seq_id!r} needs {cost} free blocks, {len(self._free)} are free"
            )
        return self._extend(seq, token_ids)

    def try_append(self, seq_id: SeqId, token_ids: Sequence[int]) -> list[tuple[int, int]] | None:
        """`append` when `can_append` holds (the copies to make), else None and nothing changes:
        the scheduler's check and append in one pass."""
        seq = self._seqs[seq_id]
        if self._append_cost(seq, len(token_ids)) > len(self._free):
            return None
        return self._extend(seq, token_ids)

    def _extend(self, seq: _Seq, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        """`append` once the free blocks are known to suffice."""
        copies: list[tuple[int, int]] = []
        if token_ids and self._last_block_shared(seq):
            src = seq.blocks[-1]
            dst = self._take_free()
            self._ref[src] -= 1  # still held by the others, so never zero here
            seq.blocks[-1] = dst
            copies.append((src, dst))
        seq.tokens.extend(token_ids)
        while len(seq.blocks) * self.block_size < len(seq.tokens):
            seq.blocks.append(self._take_free())
        return copies

    def mark_computed(self, seq_id: SeqId, num_computed: int) -> None:
        """The K/V of the sequence's first `num_computed` tokens are now in the cache: its full
        blocks among them become shareable prefix blocks."""
        seq = self._seqs[seq_id]
        if not 0 <= num_computed <= len(seq.tokens):
            raise ValueError(f"num_computed must be in [0, {len(seq.tokens)}], got {num_computed}")
        seq.num_computed = max(seq.num_computed, num_computed)
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed // bs
        # After a pass, each of the first `full` blocks is registered or has its key or block
        # taken; registrations only add entries, so until an entry is dropped or a block fills
        # a new pass would change nothing (a decode step usually fills no block).
        if seq.scanned == (full, self._drops):
            return
        seq.scanned = (full, self._drops)
        self._extend_keys(seq, full)
        for i in range(full):
            key, block = seq.keys[i], seq.blocks[i]
            if key not in self._cached and block not in self._key_of:
                self._cached[key] = block
                self._key_of[block] = key

    def _extend_keys(self, seq: _Seq, full: int) -> None:
        """Keys of the sequence's first `full` blocks (those filled since allocation: decode, new
        turns, are keyed here)."""
        bs = self.block_size
        while len(seq.keys) < full:
            i = len(seq.keys)
            seq.keys.append(
                block_key(seq.keys[-1] if seq.keys else b"", seq.tokens[i * bs : (i + 1) * bs])
            )

    def expect_computed(self, seq_id: SeqId, num_computed: int) -> None:
        """The step being scheduled computes the sequence's tokens up to `num_computed`: until
        `begin_step`, its full blocks among them can be shared by sequences admitted to the same
        step (see the module docstring)."""
        if not self.enable_prefix_caching:
            return
        seq = self._seqs[seq_id]
        full = min(num_computed, len(seq.tokens)) // self.block_size
        self._extend_keys(seq, full)
        for i in range(seq.num_computed // self.block_size, full):
            key = seq.keys[i]
            if key not in self._cached:
                self._expected.setdefault(key, seq.blocks[i])

    def begin_step(self) -> None:
        """A new step is being scheduled: the previous step's expectations are spent (its
        blocks are registered by `mark_computed`, or were never computed)."""
        self._expected.clear()

    def fork(self, parent_id: SeqId, child_id: SeqId) -> None:
        """The child shares every block of the parent (copy-on-write, see `append`)."""
        if child_id in self._seqs:
            raise ValueError(f"sequence {child_id!r} already has blocks")
        parent = self._seqs[parent_id]
        for block in parent.blocks:
            self._hold(block)
        self._seqs[child_id] = _Seq(
            blocks=list(parent.blocks),
            tokens=list(parent.tokens),
            keys=list(parent.keys),
            num_computed=parent.num_computed,
        )

    def free(self, seq_id: SeqId) -> None:
        """Release a sequence's blocks (finished or preempted); unknown ids are ignored."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        for block in reversed(seq.blocks):  # the tail first: prefix blocks stay cached longer
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None

    # ---------------------------------------------------------------- batch helpers

    def block_tables(
        self,
        seq_ids: Sequence[SeqId],
        *,
        width: int | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """int32 [B, width] block tables (width: the longest, by default), padded with the null
        block, so even a stray read stays in bounds and reads no sequence's block; the kernels
        never read the padding."""
        tables = [self._seqs[s].blocks for s in seq_ids]
        longest = max((len(t) for t in tables), default=0)
        width = max(longest, 1) if width is None else width
        if width < longest:
            raise ValueError(f"width {width} is narrower than the longest block table ({longest})")
        out = torch.full((len(tables), width), NULL_BLOCK, dtype=torch.int32)
        for b, table in enumerate(tables):
            out[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
        return out.to(device)

    def slot_mapping(
        self, spans: Iterable[tuple[SeqId, int, int]], *, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """int64 slots of the token positions [start, end) of each (seq_id, start, end), in
        order."""
        bs = self.block_size
        slots: list[int] = []
        for seq_id, start, end in spans:
            blocks = self._seqs[seq_id].blocks
            if not 0 <= start <= end <= len(blocks) * bs:
                raise IndexError(
                    f"positions [{start}, {end}) are outside sequence {seq_id!r}'s blocks"
                )
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
        return torch.tensor(slots, dtype=torch.int64, device=device)
