"""The engine: requests in, streamed text out, many sequences sharing one paged KV-cache.

`add_request` queues a prompt; each `step()` asks the scheduler for a batch (decode tokens and
prefill chunks side by side), runs the model once over the flattened tokens, samples the next
token of every sequence whose tokens are all in the cache, and returns what changed as
`StreamEvent`s. The sequences' bookkeeping after the step (tokens cached and appended, siblings
forked, finished sequences freed) is the scheduler's (`after_forward`, `update_from_output`).
The engine holds no global state: two engines (one per worker, one per device) never
interfere, which is what lets a batch job be sharded across processes or machines.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import pyllm.generation as generation
from pyllm.engine.block_manager import BlockManager
from pyllm.engine.scheduler import Scheduler, SchedulerConfig
from pyllm.engine.sequence import SeqStatus, Sequence
from pyllm.errors import ContextLengthError
from pyllm.generation import StreamEvent
from pyllm.model.batch import allocate_kv_caches, build_metadata
from pyllm.sampler import Sampler, SampleResult
from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.runtime import ModelRunner
    from pyllm.types import Tokenizer


@dataclass
class EngineConfig:
    block_size: int = 16
    # KV-cache size: `kv_cache_tokens` tokens if given, else as many as fit `kv_cache_mb`
    # (PYLLM_KV_CACHE_MB, default 1024), and never less than one full context. Pages are touched
    # only as they fill, so an idle cache costs address space, not memory.
    kv_cache_tokens: int | None = None
    kv_cache_mb: int = int(os.environ.get("PYLLM_KV_CACHE_MB", "1024"))
    kv_dtype: torch.dtype = torch.float32
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    # On CUDA, replay decode steps as CUDA graphs (pyllm/model/cuda_graph.py); ignored on the CPU.
    cuda_graphs: bool = True


def _tokens(s: Sequence, start: int, n: int) -> list[int]:
    """s.tokens[start:start + n] without building prompt + output (a decode step's one token
    would otherwise cost a copy of the whole sequence)."""
    p = len(s.prompt)
    if start >= p:
        return s.out[start - p : start - p + n]
    if start + n <= p:
        return s.prompt[start : start + n]
    return s.prompt[start:] + s.out[: start + n - p]


class CannotFitError(ContextLengthError):
    """A request that could never fit in the KV-cache or the context window."""


class LLMEngine:
    def __init__(
        self, model: ModelRunner, tokenizer: Tokenizer, config: EngineConfig | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config = config or EngineConfig()
        cfg = model.config
        self.context_length = cfg.max_position
        bs = config.block_size
        bytes_per_token = (
            2
            * cfg.n_layer
            * cfg.n_kv_head
            * cfg.head_dim
            * torch.empty(0, dtype=config.kv_dtype).element_size()
        )
        if config.kv_cache_tokens is not None:
            tokens = config.kv_cache_tokens
        else:
            tokens = max((config.kv_cache_mb << 20) // bytes_per_token, self.context_length)
        self.num_blocks = max(1, -(-tokens // bs))
        self.blocks = BlockManager(
            self.num_blocks, bs, enable_prefix_caching=config.enable_prefix_caching
        )
        self.kv_caches = allocate_kv_caches(
            cfg.n_layer,
            self.blocks.pool_blocks,
            bs,
            cfg.n_kv_head,
            cfg.head_dim,
            config.kv_dtype,
            model.device,
        )
        self.scheduler = Scheduler(
            self.blocks, SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens)
        )
        # What runs a step: the model's runner itself, or a wrapper with the same call signature
        # (on a GPU, one that replays captured CUDA graphs for decode steps): the runtime's choice.
        self.forward = model.step_runner(
            max_batch=config.max_num_seqs, cuda_graphs=config.cuda_graphs
        )
        self._device = model.device  # where the KV caches live (looked up once, not per step)
        # The engine keeps a chosen token's log-prob only where its request asked for log-probs,
        # so its sampler may skip computing the others (the greedy fast path's main cost).
        # The tokenizer reaches steps that read token text (DRY's sequence breakers).
        self.sampler = Sampler(tokenizer=tokenizer, skip_unrequested_logprobs=True)
        self._masks = None  # pyllm.constraints.MaskWorker, made on the first constrained request
        self._ids = itertools.count()
        self._arange: dict[int, torch.Tensor] = {}  # rows 0..n-1 (all-decode steps), per n
        self._requests: dict[Hashable, list[Sequence]] = {}
        self.stats = {
            "prompt_tokens": 0,
            "cached_prompt_tokens": 0,
            "computed_tokens": 0,
            "generated_tokens": 0,
            "steps": 0,
        }

    # ------------------------------------------------------------------ requests

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise CannotFitError (a ContextLengthError) for a request that could never run."""
        if not prompt_ids:
            raise ValueError("the prompt is empty: a request needs at least one token")
        if len(prompt_ids) >= self.context_length:
            raise CannotFitError(
                f"the prompt has {len(prompt_ids)} tokens; the context length is "
                f"{self.context_length} (room is needed for at least one new token)"
            )
        longest = min(len(prompt_ids) + params.max_tokens, self.context_length)
        need = -(-longest // self.config.block_size)
        if need > self.num_blocks:
            raise CannotFitError(
                f"{longest} tokens need {need} cache blocks; the cache has "
                f"{self.num_blocks} (raise kv_cache_tokens / PYLLM_KV_CACHE_MB)"
            )
        self.compile_constraint(params)  # a bad constraint is refused here (compiled once, cached)
        self.sampler.chain(params)  # an unknown sampler step too (in a step it fails the batch)

    def add_request(
        self, request_id: Hashable, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        """Queue a tokenized prompt (see `check_request` for what is refused)."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} is already running")
        self.check_request(prompt_ids, params)
        # Structured output: compiled now, so a bad schema is a ValueError here, not a hang.
        constraint = self.compile_constraint(params)
        seqs = []
        for index in range(params.n):
            p = params
            if params.n > 1 and params.seed is not None:
                p = params.replace(seed=(params.seed + index) % 2**64)  # n different draws
            seqs.append(
                Sequence(
                    next(self._ids),
                    request_id,
                    index,
                    list(prompt_ids),
                    p,
                    self.tokenizer,
                    self.context_length,
                )
            )
            if constraint is not None:
                seqs[-1].constraint = constraint if index == 0 else constraint.copy()
        parent, parent.children = seqs[0], seqs[1:]  # siblings fork once the prompt is cached
        self._requests[request_id] = seqs
        self.scheduler.add(parent)
        self.stats["prompt_tokens"] += len(prompt_ids)

    def compile_constraint(self, params: SamplingParams):
        """The request's structured-output matcher (pyllm.constraints), or None without one;
        ValueError when the constraint is unknown, invalid or unsatisfiable."""
        from pyllm.constraints.spec import requested_constraint

        if requested_constraint(params) is None:
            return None
        from pyllm.constraints import MaskWorker, compile_constraint

        if self._masks is None:
            self._masks = MaskWorker(self.tokenizer.vocab_size, self.model.config.vocab_size)
        return compile_constraint(params, self.tokenizer)

    def abort(self, request_id: Hashable) -> None:
        """Stop a request now (its blocks are freed; its cached prefix stays reusable)."""
        for seq in self._requests.pop(request_id, []):
            if not seq.done:
                seq.finish_reason = "abort"
            self.scheduler.finish(seq)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def request_ids(self) -> list[Hashable]:
        """The requests in the engine (queued or running), oldest first."""
        return list(self._requests)

    # ------------------------------------------------------------------ the step

    @torch.inference_mode()
    def step(self) -> list[StreamEvent]:
        batch = self.scheduler.schedule()
        if not batch.items:
            if self.scheduler.has_work():
                raise RuntimeError("the scheduler could not place any sequence in the KV-cache")
            return []
        self.stats["steps"] += 1
        for src, dst in batch.copies:  # copy-on-write of shared partial blocks
            for k_cache, v_cache in self.kv_caches:
                k_cache[dst].copy_(k_cache[src])
                v_cache[dst].copy_(v_cache[src])
        seqs = [s for s, _ in batch.items]
        counts = [n for _, n in batch.items]
        ids = [t for s, n in batch.items for t in _tokens(s, s.cached, n)]
        device = self._device
        if getattr(self.forward, "takes_host_metadata", False) and all(n == 1 for n in counts):
            # A decode step for a graph runner that takes its ids and metadata on the host: it
            # checks them there and copies them into its graph's buffers (no device tensors made
            # here, reduced on the device to be checked, and copied again).
            device = torch.device("cpu")
        meta = build_metadata(
            [s.cached for s in seqs],
            counts,
            [self.blocks.block_table(s.seq_id) for s in seqs],
            self.config.block_size,
            device,
        )
        ready, rows, end = [], [], 0
        for i, (s, n) in enumerate(batch.items):
            end += n
            if s.cached + n == s.num_tokens:
                ready.append(i)
                rows.append(end - 1)  # the row of its last token
        in_graph = None
        masks = None
        if ready and self._masks is not None:
            # The rows sampled this step, in the order of `sampled` below: their matchers have
            # consumed every earlier token, so the masks are computed while the forward runs.
            rows_seqs = [x for i in ready for x in (seqs[i], *seqs[i].children)]
            masks = self._masks.start([x.constraint for x in rows_seqs])
        try:
            if ready:
                input_ids = torch.tensor(ids, dtype=torch.int64, device=device)
                in_graph = self._sample_in_graph(input_ids, meta, seqs, len(ready))
                if in_graph is None:
                    logits = self.forward(
                        input_ids, meta, self.kv_caches, self._rows_tensor(rows)
                    ).float()
            else:  # prompt chunks only (perhaps one token each: then metadata may be on the host)
                self.model.hidden_states(
                    torch.tensor(ids, dtype=torch.int64, device=self._device),
                    meta.to(self._device),
                    self.kv_caches,
                )
                logits = None
        except BaseException:
            # The step's K/V may be half written, and prompts admitted with it may share blocks
            # it was to fill: every sequence of the batch starts over (recompute, as preemption;
            # the step's expectations expire when the next step is scheduled).
            for s in seqs:
                if s.status is SeqStatus.RUNNING:
                    self.scheduler.preempt(s)
            raise
        self.stats["computed_tokens"] += len(ids)
        sampled, row_of = self.scheduler.after_forward(batch)
        if in_graph is not None:  # a decode step: every sequence was sampled in the graph
            tokens, chosen_logprobs, probs = in_graph
            token_ids, logprobs = generation.sampled_tokens(
                SampleResult(tokens, chosen_logprobs, probs=probs), seqs
            )
            return self._append(seqs, token_ids, logprobs)
        if logits is None:
            return []
        if len(row_of) != logits.shape[0]:
            logits = logits[torch.tensor(row_of, device=logits.device)]
        return self._sample_and_append(logits, sampled, None if masks is None else masks.result())

    def _rows_tensor(self, rows: list[int]) -> torch.Tensor:
        """int64 `rows` on the device; a decode-only step's rows are 0..n-1, made once per n
        (the model only reads them)."""
        n = len(rows)
        if rows[-1] == n - 1:  # ascending distinct rows ending at n - 1: exactly 0..n-1
            t = self._arange.get(n)
            if t is None:
                t = self._arange[n] = torch.arange(n, dtype=torch.int64, device=self._device)
            return t
        return torch.tensor(rows, dtype=torch.int64, device=self._device)

    def _sample_in_graph(self, input_ids: torch.Tensor, meta, seqs: list[Sequence], ready: int):
        """(token ids, log-probs, probs) of a decode step whose forward and sampling ran in one
        CUDA-graph replay (CudaGraphRunner.decode_and_sample), or None: not a decode step through
        such a runner, or a row the graph cannot sample (see Sampler.graph_params; rows still
        masking their stop ids for min_tokens, and n > 1 forks, take the usual path too)."""
        decode_and_sample = getattr(self.forward, "decode_and_sample", None)
        if (
            decode_and_sample is None
            or ready != len(seqs)
            or any(
                s.children
                or (len(s.out) < s.params.min_tokens and s.stop_ids)
                or s.constraint is not None
                for s in seqs
            )
        ):
            return None
        plan = self.sampler.graph_params(
            [s.params for s in seqs],
            [s.prompt for s in seqs],
            [s.out for s in seqs],
            [s.state for s in seqs],
        )
        if plan is None:
            return None
        return decode_and_sample(input_ids, meta, self.kv_caches, *plan)

    def _sample_and_append(
        self, logits: torch.Tensor, seqs: list[Sequence], token_mask: torch.Tensor | None = None
    ) -> list[StreamEvent]:
        # (looked up on the module at each call, so a wrapped generation.sample is the one used)
        if token_mask is None:
            token_ids, logprobs = generation.sample(logits, seqs, self.sampler)
        else:
            token_ids, logprobs = generation.sample(
                logits, seqs, self.sampler, token_mask=token_mask
            )
        return self._append(seqs, token_ids, logprobs)

    def _append(self, seqs: list[Sequence], token_ids: list[int], logprobs) -> list[StreamEvent]:
        self.stats["generated_tokens"] += len(seqs)
        events = self.scheduler.update_from_output(seqs, token_ids, logprobs)
        for s in seqs:  # a request ends when all its sequences have
            if s.done:
                group = self._requests.get(s.request_id)
                if group is not None and all(x.done for x in group):
                    del self._requests[s.request_id]
        return events

    # ------------------------------------------------------------------ convenience

    def run(
        self,
        requests: Iterable[tuple[Hashable, list[int], SamplingParams]],
        lookahead: int | None = None,
    ) -> Iterator[StreamEvent]:
        """Feed requests lazily (keeping about `lookahead` queued) and yield every event until
        all are finished. Closing the iterator aborts whatever is still running."""
        pending = iter(requests)
        lookahead = lookahead or 2 * self.config.max_num_seqs
        exhausted = False
        try:
            while True:
                while not exhausted and len(self._requests) < lookahead:
                    try:
                        rid, prompt, params = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    self.add_request(rid, prompt, params)
                if not self.has_unfinished():
                    if exhausted:
                        return
                    continue
                yield from self.step()
        finally:
            for rid in list(self._requests):
                self.abort(rid)
