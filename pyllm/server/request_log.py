"""Served requests in the conversation log (pyllm/logs.py), as `pyllm run` and chat turns are.

Each chat or text completion becomes one row per completion, its conversation id the request's
id (an HTTP request is a conversation of its own: clients resend the history). Writing happens
on a worker thread, so a slow disk never stalls the event loop, and a log that cannot be written
is warned about once and never fails a request (pyllm.logs.record's rule).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pyllm import logs


class RequestLog:
    """Logs served replies when enabled (`pyllm serve` turns it on unless --no-log/PYLLM_LOG=0)."""

    def __init__(self, model: str, enabled: bool) -> None:
        self.model = model
        self.enabled = enabled

    async def replies(
        self,
        request_id: str,
        *,
        prompt: str,
        replies: Sequence[tuple[str, str | None, int]],
        params: Any,
        prompt_tokens: int,
        started: float,
        messages: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Log each `(text, finish_reason, completion_tokens)` of one request."""
        if not self.enabled:
            return
        seconds = time.perf_counter() - started
        settings = logs.changed_settings(params)

        def write() -> None:
            for text, finish, tokens in replies:
                logs.record(
                    conversation_id=request_id,
                    model=self.model,
                    prompt=prompt,
                    reply=text,
                    messages=messages,
                    settings=settings,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=tokens,
                    seconds=seconds,
                    finish_reason=finish,
                )

        await asyncio.to_thread(write)
