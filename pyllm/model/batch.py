"""What the model needs to know about a flattened batch: AttentionMetadata, and a KV cache.

A forward pass sees T tokens from B sequences laid end to end (vLLM style, no padding). Sequence
b owns rows `query_start[b]:query_start[b+1]`; its new tokens sit at the end of its
`context_lens[b]` cached tokens; `slot_mapping[t]` is where row t's K/V are written in the paged
cache (`block * block_size + offset`); `block_tables[b]` lists the cache blocks of sequence b.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The reserved block that pads block tables (shorter tables of a batch, a CUDA graph's padding
# rows): the engine's BlockManager never gives it to a sequence, so a padding entry is always in
# bounds and never names a block some sequence owns. Nothing is written to it (padding rows have
# slot -1); what is read from it is dropped.
NULL_BLOCK = 0


@dataclass
class AttentionMetadata:
    query_start: torch.Tensor  # int32 [B+1]
    context_lens: torch.Tensor  # int32 [B]   cached tokens incl. this step's
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    slot_mapping: torch.Tensor  # int64 [T]  (negative = padding, not written)
    positions: torch.Tensor  # int64 [T]
    max_query_len: int
    max_context_len: int

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    def last_token_rows(self) -> torch.Tensor:
        """int64 [B]: the row of each sequence's last token (where the next token is predicted)."""
        return self.query_start[1:].to(torch.int64) - 1

    def to(self, device: torch.device | str) -> AttentionMetadata:
        return AttentionMetadata(
            self.query_start.to(device),
            self.context_lens.to(device),
            self.block_tables.to(device),
            self.slot_mapping.to(device),
            self.positions.to(device),
            self.max_query_len,
            self.max_context_len,
        )


def build_metadata(
    num_cached: Sequence[int],
    num_new: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for B sequences: sequence b already has `num_cached[b]` tokens in its blocks
    `block_tables[b]` and gets `num_new[b]` new tokens in this step (a prefill chunk or 1).

    Built every step, so it is kept cheap (a few µs for a decode step): the numbers are
    gathered in two `array`s (int64 and int32) with loops per sequence and per block, never per
    token, and the tensors are views of them (`torch.frombuffer`), not one `torch.tensor` each.
    """
    B = len(num_cached)
    if not (B == len(num_new) == len(block_tables)):
        raise ValueError("num_cached, num_new and block_tables must have one entry per sequence")
    starts, ctx, positions, slots = [0], [], array("q"), array("q")
    width = 1
    for cached, new, table in zip(num_cached, num_new, block_tables):
        if cached < 0 or new < 1:
            raise ValueError(
                f"each sequence needs num_cached >= 0 and num_new >= 1, got {cached}, {new}"
            )
        total = cached + new
        n = len(table)
        if total > n * block_size:
            raise ValueError(
                f"a sequence of {total} tokens needs more than its {n} blocks of {block_size}"
            )
        starts.append(starts[-1] + new)
        ctx.append(total)
        width = max(width, n)
        if new == 1:
            positions.append(cached)
            slots.append(table[cached // block_size] * block_size + cached % block_size)
            continue
        positions.extend(range(cached, total))
        for j in range(cached // block_size, (total - 1) // block_size + 1):  # block by block
            base = table[j] * block_size - j * block_size
            slots.extend(
                range(base + max(cached, j * block_size), base + min(total, (j + 1) * block_size))
            )
    T = starts[-1]
    if B == 0:
        meta = AttentionMetadata(
            torch.zeros(1, dtype=torch.int32),
            torch.zeros(0, dtype=torch.int32),
            torch.zeros(0, 1, dtype=torch.int32),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
            0,
            0,
        )
    else:
        ints = array("i", starts)
        ints.extend(ctx)
        for table in block_tables:  # padded with NULL_BLOCK (0): in bounds, never read
            ints.extend(table)
            ints.extend(
                _ZEROS[: width - len(table)]
                if width - len(table) <= len(_ZEROS)
                else [0] * (width - len(table))
            )
        positions.extend(slots)  # one int64 buffer: positions, then slots
        i64, i32 = torch.int64, torch.int32
        meta = AttentionMetadata(
            query_start=torch.frombuffer(ints, dtype=i32, count=B + 1),
            context_lens=torch.frombuffer(ints, dtype=i32, count=B, offset=4 * (B + 1)),
            block_tables=torch.frombuffer(
                ints, dtype=i32, count=B * width, offset=4 * (2 * B + 1)
            ).view(B, width),
            slot_mapping=torch.frombuffer(positions, dtype=i64, count=T, offset=8 * T),
            positions=torch.frombuffer(positions, dtype=i64, count=T),
            max_query_len=max(num_new),
            max_context_len=max(ctx),
        )
    if device != "cpu" and torch.device(device).type != "cpu":
        meta = meta.to(device)
    return meta


_ZEROS = array("i", bytes(4 * 256))  # NULL_BLOCK padding


KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


def allocate_kv_caches(
    n_layer: int,
    num_blocks: int,
    block_size: int,
    n_kv_head: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> KVCaches:
    """One (k_cache, v_cache) pair per layer, each [num_blocks, block_size, Hkv, D]."""
    shape = (num_blocks, block_size, n_kv_head, head_dim)
    return [
        (
            torch.empty(shape, dtype=dtype, device=device),
            torch.empty(shape, dtype=dtype, device=device),
        )
        for _ in range(n_layer)
    ]


class ContiguousKVCache:
    """The simplest cache layout: sequence i owns blocks `[i*per_seq, (i+1)*per_seq)`.

    For one-shot generation over a fixed set of sequences (the engine's block manager replaces
    it for continuous batching). `tokens_per_seq` is rounded up to whole blocks.
    """

    def __init__(
        self,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        num_seqs: int,
        tokens_per_seq: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.block_size = block_size
        self.blocks_per_seq = max(1, -(-tokens_per_seq // block_size))
        self.num_seqs = num_seqs
        self.capacity = self.blocks_per_seq * block_size
        self.kv_caches = allocate_kv_caches(
            n_layer, num_seqs * self.blocks_per_seq, block_size, n_kv_head, head_dim, dtype, device
        )
        self.device = device

    def block_table(self, seq: int) -> list[int]:
        return list(range(seq * self.blocks_per_seq, (seq + 1) * self.blocks_per_seq))

    def metadata(
        self, seqs: Sequence[int], num_cached: Sequence[int], num_new: Sequence[int]
    ) -> AttentionMetadata:
        """Metadata for a step over sequences `seqs` (indices into this cache)."""
        return build_metadata(
            num_cached, num_new, [self.block_table(s) for s in seqs], self.block_size, self.device
        )
