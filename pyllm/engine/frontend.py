"""The engine's thread-safe front door: one loop thread steps the engine, any number of callers
submit requests and read their own events.

The engine itself (`LLMEngine`) is single-threaded: its scheduler, block manager and sequences
are plain Python objects that one step mutates. So only the loop thread touches it. Callers
(threads, asyncio tasks, HTTP handlers) hand it *commands* — add a request, abort one, pause
for exclusive use of the model — through a queue; the loop applies them between steps, then
runs a step and delivers each event to its request's *sink* (a thread-safe queue for a sync
consumer, the event loop's queue for an async one). The loop thread exists only while there is
work: it starts on the first command and ends when the engine is idle, so an idle frontend
holds no thread (and a dropped `LLM` takes its engine with it).

Closing a stream (a consumer that stops reading, a client that disconnects) aborts its
request: the engine frees its KV blocks at once (the sync `abort` waits for that).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyllm.engine.llm_engine import LLMEngine
from pyllm.generation import Completion, StreamEvent
from pyllm.sampling_params import SamplingParams

log = logging.getLogger("pyllm.engine")

Sink = Callable[[Any], None]  # receives StreamEvents, or a BaseException when a step failed


class QueueFullError(RuntimeError):
    """The bounded waiting queue is full: the caller should retry later."""


@dataclass
class _Live:
    sink: Sink
    remaining: int  # completions not finished yet (params.n at first)


class EngineFrontend:
    """Thread-safe access to one `LLMEngine` (see the module docstring).

    :param max_waiting: most requests that may wait for a place in the batch (submitted, not yet
        running); `submit` raises QueueFullError beyond it. None = unbounded.
    """

    def __init__(self, engine: LLMEngine, *, max_waiting: int | None = None) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._ids = itertools.count()
        self._live: dict[Hashable, _Live] = {}
        self._queues: dict[Hashable, queue.SimpleQueue] = {}
        self._commands: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Condition()  # guards _commands' hand-over and the thread's life
        self._thread: threading.Thread | None = None
        self._pending_adds = 0
        self._paused_by: int | None = None  # the thread holding the engine still (exclusive)
        self.on_step: Callable[[list[StreamEvent]], None] | None = None  # metrics hook

    # ------------------------------------------------------------------ the loop thread

    def _post(self, command: tuple[Any, ...]) -> None:
        with self._wake:
            self._commands.append(command)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pyllm-engine", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._wake:
                if not self._commands and not engine.has_unfinished():
                    self._thread = None  # idle: end; the next command starts a new thread
                    return
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                self._apply(command)
            if not engine.has_unfinished():
                continue
            try:
                events = engine.step()
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                self._fail_all(exc)
                continue
            for ev in events:
                live = self._live.get(ev.request)
                if live is None:
                    continue
                if ev.finished:
                    live.remaining -= 1
                    if live.remaining == 0:
                        self._live.pop(ev.request, None)
                self._deliver(ev.request, live.sink, ev)
            if self.on_step is not None:
                try:
                    self.on_step(events)
                except Exception:  # a metrics hook must not stop the engine
                    log.exception("the engine's on_step hook failed")

    def _apply(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "add":
            _, rid, prompt_ids, params = command
            with self._wake:
                self._pending_adds -= 1
            if rid not in self._live:  # aborted before it was added
                return
            try:
                self.engine.add_request(rid, prompt_ids, params)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's caller
                live = self._live.pop(rid, None)
                if live is not None:
                    self._deliver(rid, live.sink, exc)
        elif kind == "abort":
            _, rids, done = command
            for rid in rids:
                self.engine.abort(rid)
            done.set()
        elif kind == "pause":
            _, granted, resume = command
            granted.set()
            resume.wait()
        elif kind == "call":
            _, fn, result = command
            try:
                result.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                result.put((False, exc))

    def _deliver(self, rid: Hashable, sink: Sink, item: Any) -> None:
        try:
            sink(item)
        except Exception:  # noqa: BLE001 - a failing sink (its caller gone) ends its request only
            self._live.pop(rid, None)
            self.engine.abort(rid)

    def _fail_all(self, exc: BaseException) -> None:
        """A step raised: every request in the engine ends with that error (retrying could
        raise it forever), and the engine is left empty and usable."""
        for rid in self.engine.request_ids():
            self.engine.abort(rid)
            live = self._live.pop(rid, None)
            if live is not None:
                self._deliver(rid, live.sink, exc)

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: Hashable | None = None,
        sink: Sink | None = None,
        *,
        bounded: bool = True,
    ) -> Hashable:
        """Queue a request. Its events go to `sink` (called on the loop thread; it must be quick
        and thread-safe), or, when None, collect until `events(request_id)` reads them.
        Raises at once for a request that could never run (CannotFitError, ValueError) and
        QueueFullError when `max_waiting` requests already wait (unless not `bounded`: a
        batch that knows its size, such as `run_all`'s, is not an unbounded stream of callers)."""
        self._refuse_inside_pause("submit a request")
        self.engine.check_request(prompt_ids, params)
        if bounded and self.max_waiting is not None and self.num_waiting() >= self.max_waiting:
            raise QueueFullError(
                f"{self.num_waiting()} requests are already waiting "
                f"(the limit is {self.max_waiting}); retry later"
            )
        rid = request_id if request_id is not None else ("req", next(self._ids))
        if rid in self._live:
            raise ValueError(f"request {rid!r} is already running")
        if sink is None:
            q: queue.SimpleQueue = queue.SimpleQueue()
            self._queues[rid] = q
            sink = q.put
        self._live[rid] = _Live(sink, params.n)
        with self._wake:
            self._pending_adds += 1
        self._post(("add", rid, list(prompt_ids), params))
        return rid

    def abort(self, *rids: Hashable, wait: bool = True) -> None:
        """Stop requests; with `wait`, return once the engine has freed their blocks."""
        for rid in rids:
            self._live.pop(rid, None)
            self._queues.pop(rid, None)
        done = threading.Event()
        self._post(("abort", rids, done))
        if (
            wait
            and threading.current_thread() is not self._thread
            and self._paused_by != threading.get_ident()
        ):  # (else: done when it resumes)
            done.wait()

    def events(self, rid: Hashable, n: int = 1) -> Generator[StreamEvent, None, None]:
        """Every event of one request until all `n` of its completions finish. Closing the
        iterator early aborts the request."""
        q = self._queues[rid]
        finished = 0
        try:
            while finished < n:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                finished += item.finished
                yield item
        finally:
            self._queues.pop(rid, None)
            if finished < n:
                self.abort(rid)

    def stream(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> Generator[StreamEvent, None, None]:
        rid = self.submit(prompt_ids, params)
        return self.events(rid, params.n)

    async def astream(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[StreamEvent]:
        """`stream` for asyncio: events arrive through the running event loop. Cancelling the
        consuming task (or closing the iterator) aborts the request without blocking the loop."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def sink(item: Any) -> None:
            loop.call_soon_threadsafe(q.put_nowait, item)

        rid = self.submit(prompt_ids, params, sink=sink)
        finished = 0
        try:
            while finished < params.n:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                finished += item.finished
                yield item
        finally:
            if finished < params.n:
                self.abort(rid, wait=False)

    def run_all(
        self, prompts: Sequence[list[int]], params: Sequence[SamplingParams], progress: Any = None
    ) -> list[list[Completion]]:
        """Generate for every prompt at once (continuous batching); completions per prompt in
        input order. `progress` is an optional callable called with each finished completion."""
        for p, sp in zip(prompts, params):
            self.engine.check_request(p, sp)
        q: queue.SimpleQueue = queue.SimpleQueue()
        rids: list[Hashable] = []
        out: list[dict[int, Completion]] = [{} for _ in prompts]
        remaining = sum(sp.n for sp in params)
        try:
            for p, sp in zip(prompts, params):
                rids.append(self.submit(p, sp, sink=q.put, bounded=False))
            index = {rid: i for i, rid in enumerate(rids)}
            while remaining:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    out[index[item.request]][item.output] = item.completion
                    remaining -= 1
                    if progress is not None:
                        progress(item.completion)
        finally:
            if remaining:
                self.abort(*rids)
        return [[got[i] for i in sorted(got)] for got in out]

    # ------------------------------------------------------------------ exclusive use

    @contextmanager
    def exclusive(self) -> Iterator[LLMEngine]:
        """Hold the engine still (between two steps) while the caller uses the model or the
        engine directly: scoring, or a test inspecting the block manager. Inside it the thread
        must not wait for the engine (submit a request or pause it again): that is refused."""
        self._refuse_inside_pause("hold it still again")
        granted, resume = threading.Event(), threading.Event()
        self._post(("pause", granted, resume))
        granted.wait()
        self._paused_by = threading.get_ident()
        try:
            yield self.engine
        finally:
            self._paused_by = None
            resume.set()

    def _refuse_inside_pause(self, what: str) -> None:
        if self._paused_by == threading.get_ident():
            raise RuntimeError(
                f"cannot {what} while this thread holds the engine still "
                "(inside LLM.exclusive() / EngineFrontend.exclusive()): it would "
                "wait forever"
            )

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the loop thread between two steps and return its result."""
        result: queue.SimpleQueue = queue.SimpleQueue()
        self._post(("call", fn, result))
        ok, value = result.get()
        if not ok:
            raise value
        return value

    # ------------------------------------------------------------------ figures

    def num_waiting(self) -> int:
        """Requests submitted and not running yet (queued commands plus the scheduler's queue)."""
        return self._pending_adds + len(self.engine.scheduler.waiting)

    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    def blocks_in_use(self) -> int:
        blocks = self.engine.blocks
        return blocks.num_blocks - blocks.num_free_blocks
