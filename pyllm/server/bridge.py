"""The asyncio side of the engine's front door: HTTP handlers submit requests and read their
events without blocking the event loop.

`Generation` submits one or more prompts at once (so a refusal — a prompt that cannot fit, a full
queue — is raised before any response header is sent) and yields `(prompt index, event)` pairs as
the loop thread delivers them. Closing it (the handler returns, the client disconnects, the task
is cancelled) aborts whatever is unfinished, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from pyllm.engine.frontend import EngineFrontend, QueueFullError
from pyllm.errors import ContextLengthError
from pyllm.generation import StreamEvent
from pyllm.sampling_params import SamplingParams
from pyllm.server.protocol import APIError

T = TypeVar("T")


class Generation:
    """Requests submitted together; iterate for `(prompt index, StreamEvent)` in arrival order."""

    def __init__(
        self,
        frontend: EngineFrontend,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        *,
        observer: Any = None,
    ) -> None:
        self.frontend = frontend
        self.observer = observer  # metrics: .first_token(s), .tokens(n, seconds), .finished()
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._index: dict[Hashable, int] = {}
        self._remaining = len(prompts) * params.n
        self._start = time.perf_counter()
        self._last: dict[tuple[Hashable, int], tuple[float, int]] = {}

        def sink(item: Any) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

        try:
            for i, ids in enumerate(prompts):
                rid = frontend.submit(ids, params, sink=sink)
                self._index[rid] = i
        except QueueFullError as exc:
            self._abort()
            raise APIError(
                429,
                f"the server is busy: {exc}",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except (ContextLengthError, ValueError) as exc:
            self._abort()
            raise APIError(
                400,
                str(exc),
                code="context_length_exceeded"
                if isinstance(exc, ContextLengthError)
                else "invalid_value",
            ) from None

    def _abort(self) -> None:
        if self._index:
            self.frontend.abort(*self._index, wait=False)
            self._index = {}

    def _observe(self, ev: StreamEvent) -> None:
        if self.observer is None:
            return
        now = time.perf_counter()
        key = (ev.request, ev.output)
        n = len(ev.completion.token_ids)
        then, before = self._last.get(key, (self._start, 0))
        if n > before:
            if before == 0:
                self.observer.first_token(now - then)
                if n > 1:
                    self.observer.tokens(n - 1, 0.0)
            else:
                self.observer.tokens(n - before, now - then)
            self._last[key] = (now, n)

    async def __aiter__(self) -> AsyncGenerator[tuple[int, StreamEvent], None]:
        try:
            while self._remaining:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise APIError(
                        500, f"the engine failed: {item}", type="server_error", code="engine_error"
                    )
                self._observe(item)
                if item.finished:
                    self._remaining -= 1
                yield self._index[item.request], item
        finally:
            if self._remaining:
                self._abort()

    def close(self) -> None:
        """Abort what is unfinished (idempotent; an iterator that ran out aborts nothing)."""
        if self._remaining:
            self._abort()


async def until_disconnected(receive: Callable[[], Awaitable[Any]], work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it (its `finally` aborts the engine
    requests) and raise asyncio.CancelledError."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise asyncio.CancelledError("the client disconnected")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
