"""Decode steps replayed as CUDA graphs: one graph per (batch bucket, block-table width bucket).

A decode step (every sequence brings exactly one new token) is a few hundred small kernels; each
launched from Python costs microseconds, more than the kernel itself at small batches. The runner
captures the model's forward once per bucket over static input buffers and then replays it: one
graph launch a step.

`CudaGraphRunner(model)` has the model's call signature, `runner(input_ids, meta, kv_caches,
logits_at=None) -> logits`, so the engine can call it in the model's place:

- prefill and mixed steps (some sequence has more than one new token), batches larger than the
  biggest bucket, and models on the CPU call the model directly;
- a decode step of B sequences is validated once on the host with the model's own checks
  (`GPT._check_step`: ids, positions, slots and block tables in range), then its ids, positions,
  slots, context lengths and block tables are copied into the static buffers of the bucket
  (B rounded up to 1, 2, 4, 8, ...; the block-table width rounded up to a power of two, at least
  `min_width`), and the bucket's graph is replayed (captured on first use, with the model's
  per-step validation skipped: it ran before the copy). Padding rows get slot -1 (nothing is
  written to the cache) and a context of one token in block 0 (a valid read whose result is
  dropped); every row is computed independently, so padding never changes a real row.

The graph holds the model's forward up to the logits. Sampling runs after it, eagerly (the
sampler's per-request parameters and penalties change every step; one fused kernel either way).

`graphs=False` runs the same padded static-buffer path without capturing (on any device), so the
bucketing and padding logic is testable on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyllm.model.batch import AttentionMetadata, KVCaches


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass
class _Bucket:
    """Static inputs (and, once captured, the graph and its output) of one (B, width) bucket."""

    ids: torch.Tensor  # int64 [B]
    meta: AttentionMetadata  # static tensors; query_start is 0..B (one token a sequence)
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # float32 [B, V], the graph's output
    used: int = field(default=0)

    @classmethod
    def allocate(cls, batch: int, width: int, block_size: int, device: torch.device) -> _Bucket:
        i64, i32 = torch.int64, torch.int32
        meta = AttentionMetadata(
            query_start=torch.arange(batch + 1, dtype=i32, device=device),
            context_lens=torch.ones(batch, dtype=i32, device=device),
            block_tables=torch.zeros(batch, width, dtype=i32, device=device),
            slot_mapping=torch.full((batch,), -1, dtype=i64, device=device),
            positions=torch.zeros(batch, dtype=i64, device=device),
            max_query_len=1,
            max_context_len=width * block_size,
        )
        return cls(torch.zeros(batch, dtype=i64, device=device), meta)

    def load(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copy a validated decode step of B <= bucket rows in; pad the rest."""
        m, n = self.meta, input_ids.shape[0]
        self.ids[:n].copy_(input_ids)
        m.positions[:n].copy_(meta.positions)
        m.slot_mapping[:n].copy_(meta.slot_mapping)
        m.context_lens[:n].copy_(meta.context_lens)
        m.block_tables[:n, :meta.block_tables.shape[1]].copy_(meta.block_tables)
        if n < self.ids.shape[0]:
            # Rows past n may hold an earlier, larger step: never write its slots again, and
            # read one token only. Their positions, ids and block ids stay valid (they were
            # validated when written, or are the zeros they started as).
            m.slot_mapping[n:].fill_(-1)
            m.context_lens[n:].fill_(1)


class CudaGraphRunner:
    """Call the model, replaying a captured CUDA graph for pure decode steps (module docstring)."""

    def __init__(self, model: torch.nn.Module, *, max_batch: int = 64, min_width: int = 16,
                 graphs: bool | None = None) -> None:
        self.model = model
        self.max_batch = next_power_of_two(max(1, max_batch))
        self.min_width = max(1, min_width)
        self.graphs = model.device.type == "cuda" if graphs is None else bool(graphs)
        if self.graphs and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool = None
        self._cache_key: tuple | None = None
        self.stats = {"eager": 0, "replays": 0, "captures": 0}

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def bucket_of(self, num_seqs: int, width: int) -> tuple[int, int]:
        """The (batch, block-table width) bucket a decode step runs in."""
        return next_power_of_two(num_seqs), next_power_of_two(max(width, self.min_width))

    def is_decode_step(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> bool:
        n = input_ids.shape[0]
        return (n > 0 and meta.max_query_len == 1 and meta.context_lens.shape[0] == n
                and meta.query_start.shape[0] == n + 1 and n <= self.max_batch)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches,
                 logits_at: torch.Tensor | None = None) -> torch.Tensor:
        if not self.is_decode_step(input_ids, meta):
            self.stats["eager"] += 1
            return self.model(input_ids, meta, kv_caches, logits_at)
        if len(kv_caches) != len(self.model.blocks):
            raise ValueError(f"need one KV cache per layer ({len(self.model.blocks)}), "
                             f"got {len(kv_caches)}")
        # Everything the graph will trust is checked here, on this step's own tensors.
        self.model._check_step(input_ids, meta, kv_caches)
        self._track_caches(kv_caches)
        n = input_ids.shape[0]
        key = self.bucket_of(n, meta.block_tables.shape[1])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket.allocate(key[0], key[1], kv_caches[0][0].shape[1], self.device)
            self._buckets[key] = bucket
        bucket.load(input_ids, meta)
        bucket.used += 1
        if not self.graphs:
            self.stats["eager"] += 1
            logits = self.model(bucket.ids, bucket.meta, kv_caches, validated=True)
        else:
            if bucket.graph is None:
                self._capture(bucket, kv_caches)
            bucket.graph.replay()
            self.stats["replays"] += 1
            logits = bucket.logits
        logits = logits[:n]
        # A copy either way: the graph's output buffer is overwritten by the next replay.
        return logits.clone() if logits_at is None else logits.index_select(0, logits_at)

    def _track_caches(self, kv_caches: KVCaches) -> None:
        """Graphs bake in the cache tensors' addresses: new caches mean new graphs."""
        key = (len(kv_caches), kv_caches[0][0].data_ptr(), kv_caches[-1][1].data_ptr(),
               tuple(kv_caches[0][0].shape), kv_caches[0][0].dtype)
        if key != self._cache_key:
            self._buckets.clear()
            self._cache_key = key

    def _capture(self, bucket: _Bucket, kv_caches: KVCaches) -> None:
        """Warm up on a side stream (first-call work stays out of the graph), then capture.

        The warm-up runs the step that is about to be replayed: its cache writes are the same
        values the replay writes again, so running it twice changes nothing.
        """
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        run = lambda: self.model(bucket.ids, bucket.meta, kv_caches, validated=True)  # noqa: E731
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a frontend, a tokenizer) cannot break it
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            bucket.logits = run()
        bucket.graph = graph
        self.stats["captures"] += 1

    def reset(self) -> None:
        """Drop every captured graph and static buffer (they are rebuilt on demand)."""
        self._buckets.clear()
        self._cache_key = None
