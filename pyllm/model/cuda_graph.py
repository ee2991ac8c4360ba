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
  (`GPT.check_step`: ids, positions, slots and block tables in range), then its ids, positions,
  slots, context lengths and block tables are copied into the static buffers of the bucket
  (B rounded up to 1, 2, 4, 8, ...; the block-table width rounded up to a power of two, at least
  `min_width`), and the bucket's graph is replayed (captured on first use, with the model's
  per-step validation skipped: it ran before the copy). Padding rows get slot -1 (nothing is
  written to the cache) and a context of one token in the null block (`NULL_BLOCK`, which no
  sequence owns: a valid read whose result is dropped); every row is computed independently,
  so padding never changes a real row.

The graph holds the model's forward up to the logits. `decode_and_sample` also captures the
fused sampler (pyllm/ops/sampling.py) on those logits, so a decode step is one replay from token
ids to sampled ids: the step's per-row parameters (temperature, top-k/p, min-p, typical-p, seed,
position) go into static buffers like the ids. Rows with inputs whose size changes from step to
step (penalty windows, logit bias, top log-probs) are sampled after the graph instead; the engine
decides per step (`Sampler.graph_params`).

`graphs=False` runs the same padded static-buffer path without capturing (on any device), so the
bucketing and padding logic is testable on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from pyllm.model.batch import NULL_BLOCK, AttentionMetadata, KVCaches
from pyllm.ops import sampling as sampling_ops
from pyllm.ops.kv_cache import check_cache_pair

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.runtime import ModelRunner

_Out = TypeVar("_Out")  # what a captured function returns: logits, or the sampled tensors

# fparams of a padding row: greedy (temperature 0), every filter and penalty off.
_NEUTRAL_GREEDY = (0.0, *sampling_ops.NEUTRAL_FPARAMS[1:])


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
    # decode_and_sample: the sampler's static parameter rows, and the graph that samples in it
    # with its outputs (token ids int64 [B], log-probs float32 [B], probs float32 [B]).
    fparams: torch.Tensor | None = None
    iparams: torch.Tensor | None = None
    neutral: torch.Tensor | None = None  # float32 [B, 7]: the padding rows' fparams
    sample_graph: torch.cuda.CUDAGraph | None = None
    sampled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def param_rows(
        self, nf: int, ni: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampler's static parameter rows (fparams, iparams, neutral), made on first use."""
        if self.fparams is None or self.iparams is None or self.neutral is None:
            B = self.ids.shape[0]
            self.fparams = torch.empty(B, nf, dtype=torch.float32, device=device)
            self.iparams = torch.zeros(B, ni, dtype=torch.int64, device=device)
            self.neutral = (
                torch.tensor(_NEUTRAL_GREEDY, dtype=torch.float32).expand(B, nf).to(device)
            )
        return self.fparams, self.iparams, self.neutral

    @classmethod
    def allocate(cls, batch: int, width: int, block_size: int, device: torch.device) -> _Bucket:
        i64, i32 = torch.int64, torch.int32
        meta = AttentionMetadata(
            query_start=torch.arange(batch + 1, dtype=i32, device=device),
            context_lens=torch.ones(batch, dtype=i32, device=device),
            block_tables=torch.full((batch, width), NULL_BLOCK, dtype=i32, device=device),
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
        m.block_tables[:n, : meta.block_tables.shape[1]].copy_(meta.block_tables)
        if n < self.ids.shape[0]:
            # Rows past n may hold an earlier, larger step: never write its slots again, and
            # read one token only, from the null block. Their positions and ids stay valid
            # (they were validated when written, or are the zeros they started as).
            m.slot_mapping[n:].fill_(-1)
            m.context_lens[n:].fill_(1)
            m.block_tables[n:, 0].fill_(NULL_BLOCK)


class CudaGraphRunner:
    """Call the model, replaying a captured CUDA graph for pure decode steps (module docstring)."""

    def __init__(
        self,
        model: ModelRunner,
        *,
        max_batch: int = 64,
        min_width: int = 16,
        graphs: bool | None = None,
        host_metadata: bool | None = None,
    ) -> None:
        self.model = model
        self.max_batch = next_power_of_two(max(1, max_batch))
        self.min_width = max(1, min_width)
        self.graphs = model.device.type == "cuda" if graphs is None else bool(graphs)
        if self.graphs and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        # Decode steps may come with their ids and metadata still on the CPU (the engine builds
        # them there when this is set): they are checked there, with no device reductions read
        # back, and copied straight into the bucket's buffers. Default: with graphs.
        self.takes_host_metadata = self.graphs if host_metadata is None else bool(host_metadata)
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool: Any = None  # torch's graph memory pool handle, shared by every capture
        self._cache_key: tuple | None = None
        self._host_caches: KVCaches | None = (
            None  # CPU stand-ins for the checks (see _track_caches)
        )
        self.stats = {"eager": 0, "replays": 0, "captures": 0, "sampled": 0}
        self.sample_in_graph = True  # decode_and_sample on (off after a failed capture)

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
        return (
            n > 0
            and meta.max_query_len == 1
            and meta.context_lens.shape[0] == n
            and meta.query_start.shape[0] == n + 1
            and n <= self.max_batch
        )

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.is_decode_step(input_ids, meta):
            self.stats["eager"] += 1
            if input_ids.device != self.device:  # host metadata of a step the graphs do not take
                input_ids, meta = input_ids.to(self.device), meta.to(self.device)
            return self.model(input_ids, meta, kv_caches, logits_at)
        bucket = self._load(input_ids, meta, kv_caches)
        n = input_ids.shape[0]
        if not self.graphs:
            self.stats["eager"] += 1
            logits = self.model(bucket.ids, bucket.meta, kv_caches, validated=True)
        else:
            if bucket.graph is None or bucket.logits is None:
                graph, out = self._capture(
                    lambda: self.model(bucket.ids, bucket.meta, kv_caches, validated=True)
                )
                bucket.graph, bucket.logits = graph, out
            else:
                graph, out = bucket.graph, bucket.logits
            graph.replay()
            self.stats["replays"] += 1
            logits = out
        logits = logits[:n]
        # A copy either way: the graph's output buffer is overwritten by the next replay.
        return logits.clone() if logits_at is None else logits.index_select(0, logits_at)

    @torch.inference_mode()
    def decode_and_sample(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        fparams: torch.Tensor,
        iparams: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """A decode step and its sampling in one replay: (token ids int64 [n], their log-probs
        under the model's distribution float32 [n], their probabilities under the sampled
        distribution float32 [n]), what `pyllm.ops.sampling` returns for these logits and
        parameter rows (fparams [n, 7], iparams [n, 3], built by `Sampler.graph_params` from
        validated SamplingParams: the kernel trusts them). None when this is not a decode step:
        call the runner for logits instead (or when `sample_in_graph` is off)."""
        if not self.sample_in_graph or not self.is_decode_step(input_ids, meta):
            return None
        n = input_ids.shape[0]
        nf, ni = len(sampling_ops.FPARAMS), len(sampling_ops.IPARAMS)
        if fparams.shape != (n, nf) or iparams.shape != (n, ni):
            raise ValueError(
                f"need parameter rows for {n} sequences: fparams [{n}, {nf}] and iparams "
                f"[{n}, {ni}], got {list(fparams.shape)} and {list(iparams.shape)}"
            )
        bucket = self._load(input_ids, meta, kv_caches)
        B = bucket.ids.shape[0]
        f_rows, i_rows, neutral = bucket.param_rows(nf, ni, self.device)
        f_rows[:n].copy_(fparams)
        i_rows[:n].copy_(iparams)
        if n < B:  # padding rows (perhaps a larger earlier step's): greedy, neutral filters, cheap
            f_rows[n:].copy_(neutral[n:])
            i_rows[n:].zero_()
        if not self.graphs:
            self.stats["eager"] += 1
            sampled = self._forward_and_sample(bucket, kv_caches)
        else:
            if bucket.sample_graph is None or bucket.sampled is None:
                stream = torch.cuda.current_stream(self.device)
                try:
                    graph, outs = self._capture(lambda: self._forward_and_sample(bucket, kv_caches))
                    bucket.sample_graph, bucket.sampled = graph, outs
                except RuntimeError as exc:
                    # The logits graph does not depend on this one: decode goes on, sampling after
                    # the graph, and the failure is reported rather than ending the request. A
                    # failed capture_end can leave the capture stream current: restore ours.
                    torch.cuda.set_stream(stream)
                    warnings.warn(
                        f"sampling inside the CUDA graph failed to capture ({exc}); "
                        "sampling after the graph from now on",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.sample_in_graph = False
                    return None
            else:
                graph, outs = bucket.sample_graph, bucket.sampled
            graph.replay()
            self.stats["replays"] += 1
            sampled = outs
        self.stats["sampled"] += 1
        # Copies: the graph's outputs are overwritten by the next replay.
        tok, lp, probs = sampled
        return tok[:n].clone(), lp[:n].clone(), probs[:n].clone()

    def _load(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> _Bucket:
        """Check a decode step, find (or make) its bucket and copy the step in."""
        if len(kv_caches) != self.model.config.n_layer:
            raise ValueError(
                f"need one KV cache per layer ({self.model.config.n_layer}), got {len(kv_caches)}"
            )
        self._track_caches(kv_caches)
        # Everything the graph will trust is checked here, on this step's own tensors: on the
        # host against CPU stand-ins of the caches (the same shapes and dtype), or on the device.
        on_host = self.takes_host_metadata and input_ids.device.type == "cpu"
        host_caches = self._host_caches if on_host else None
        self.model.check_step(input_ids, meta, kv_caches if host_caches is None else host_caches)
        key = self.bucket_of(input_ids.shape[0], meta.block_tables.shape[1])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket.allocate(key[0], key[1], kv_caches[0][0].shape[1], self.device)
            self._buckets[key] = bucket
        bucket.load(input_ids, meta)
        bucket.used += 1
        return bucket

    def _forward_and_sample(
        self, bucket: _Bucket, kv_caches: KVCaches
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(bucket.ids, bucket.meta, kv_caches, validated=True)
        dev, B = logits.device, logits.shape[0]
        empty_i = torch.empty(0, dtype=torch.int64, device=dev)
        f_rows, i_rows, _ = bucket.param_rows(
            len(sampling_ops.FPARAMS), len(sampling_ops.IPARAMS), self.device
        )
        tok, lp, _, _, probs = sampling_ops.launch_sample_tokens(
            logits,
            f_rows,
            i_rows,
            torch.empty(B, 0, dtype=torch.int64, device=dev),
            empty_i,
            empty_i,
            torch.empty(0, dtype=torch.float32, device=dev),
            0,
        )
        return tok, lp, probs

    def _track_caches(self, kv_caches: KVCaches) -> None:
        """Graphs bake in the cache tensors' addresses: new caches mean new graphs."""
        key = (
            len(kv_caches),
            kv_caches[0][0].data_ptr(),
            kv_caches[-1][1].data_ptr(),
            tuple(kv_caches[0][0].shape),
            kv_caches[0][0].dtype,
        )
        if key != self._cache_key:
            self._buckets.clear()
            self._cache_key = None  # until the checks below pass: a refused cache is checked again
            if self.takes_host_metadata:
                # Host checks compare the metadata with CPU stand-ins of layer 0's pools (never
                # written: untouched pages take no memory), so the real ones are checked now:
                # every layer alike, layer 0's pair well formed, and on the model's device.
                k0, v0 = kv_caches[0]
                check_cache_pair(k0, v0)
                if k0.device != self.device:
                    raise ValueError(
                        f"the KV caches are on {k0.device}, the model on {self.device}"
                    )
                self.model.check_caches(kv_caches)
                stand_in = torch.empty(k0.shape, dtype=k0.dtype)
                self._host_caches = [(stand_in, stand_in)] * len(kv_caches)
            self._cache_key = key

    def _capture(self, run: Callable[[], _Out]) -> tuple[torch.cuda.CUDAGraph, _Out]:
        """Warm up on a side stream (first-call work stays out of the graph), then capture
        `run` (the forward to logits, or the forward and the sampler): the graph and the static
        output it writes at each replay.

        The warm-up runs the step that is about to be replayed: its cache writes are the same
        values the replay writes again, so running it twice changes nothing.
        """
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a frontend, a tokenizer) cannot break it
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = run()
        self.stats["captures"] += 1
        return graph, out

    def reset(self) -> None:
        """Drop every captured graph and static buffer (they are rebuilt on demand)."""
        self._buckets.clear()
        self._cache_key = None
        self._host_caches = None
