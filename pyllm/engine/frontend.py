"""Many concurrent consumers on one engine, without threads.

Each `stream()` is a generator for one request. Whoever asks for the next delta drives the
engine one step; the events of other requests produced by that step wait in their own queues
until their consumers ask. So several streams (a chat reply and a batch job, say) interleave
through the same continuous batch, and closing a stream aborts just its request.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from pyllm.engine.llm_engine import LLMEngine
from pyllm.generation import Completion, StreamEvent
from pyllm.sampling_params import SamplingParams


class EngineFrontend:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._queues: dict[Hashable, deque[StreamEvent]] = {}
        self._ids = itertools.count()

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               request_id: Hashable | None = None) -> Hashable:
        """Queue a request; its events collect until `events(request_id)` reads them."""
        rid = request_id if request_id is not None else ("req", next(self._ids))
        self.engine.add_request(rid, prompt_ids, params)
        self._queues[rid] = deque()
        return rid

    def _pump(self) -> None:
        for ev in self.engine.step():
            queue = self._queues.get(ev.request)
            if queue is not None:
                queue.append(ev)

    def events(self, rid: Hashable, n: int = 1) -> Iterator[StreamEvent]:
        """Every event of one request until all `n` of its completions finish. Closing the
        iterator early aborts the request."""
        queue = self._queues[rid]
        finished = 0
        try:
            while finished < n:
                while not queue:
                    if rid not in self.engine._requests and not queue:
                        raise RuntimeError(f"request {rid!r} ended without finishing")
                    self._pump()
                ev = queue.popleft()
                finished += ev.finished
                yield ev
        finally:
            self._queues.pop(rid, None)
            if finished < n:
                self.engine.abort(rid)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StreamEvent]:
        rid = self.submit(prompt_ids, params)
        return self.events(rid, params.n)

    def run_all(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                progress: Any = None) -> list[list[Completion]]:
        """Generate for every prompt at once (continuous batching); completions per prompt in
        input order. `progress` is an optional callable called with each finished completion."""
        rids = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        index = {rid: i for i, rid in enumerate(rids)}
        out: list[dict[int, Completion]] = [{} for _ in rids]
        remaining = sum(sp.n for sp in params)
        try:
            while remaining:
                self._pump()
                for rid in rids:
                    queue = self._queues.get(rid)
                    while queue:
                        ev = queue.popleft()
                        if ev.finished:
                            out[index[rid]][ev.output] = ev.completion
                            remaining -= 1
                            if progress is not None:
                                progress(ev.completion)
        finally:
            for rid in rids:
                self._queues.pop(rid, None)
                self.engine.abort(rid)
        return [[got[i] for i in sorted(got)] for got in out]
