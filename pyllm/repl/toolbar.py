"""The bottom toolbar: the model, the context used out of the total, the last reply's tokens/s."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.repl.session import ChatSession


def toolbar_text(session: ChatSession) -> str:
    backend = session.backend
    used, total = session.context_used, backend.context_length
    parts = [backend.model_name, f"context {used}/{total}"]
    stats = backend.last_stats
    tps = stats.tokens_per_s if stats is not None else None
    if tps is not None:
        parts.append(f"{tps:.1f} tok/s")
    parts.append("/help")
    return " " + "  |  ".join(parts) + " "


def make_toolbar(session: ChatSession) -> Callable[[], str]:
    """A callable for ``PromptSession(bottom_toolbar=...)``: called at each redraw, so it must be
    cheap (it reads counts the session keeps, never tokenizes)."""
    return lambda: toolbar_text(session)
