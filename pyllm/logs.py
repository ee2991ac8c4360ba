"""Conversation logs: every `pyllm run` and every `pyllm chat` turn, in a SQLite database at
``$PYLLM_HOME/logs.db`` (as `llm logs` keeps them). `pyllm logs` reads them back;
`pyllm run -c` and `pyllm chat -c` continue the last conversation.

One table, one row per reply::

    responses(id, conversation_id, created, model, prompt, system, messages, settings, reply,
              prompt_tokens, completion_tokens, seconds, first_token_seconds, finish_reason)

``messages`` is the JSON list of chat messages the model was given (system prompt included), so
that the conversation so far is ``messages + [the reply]``; a plain completion (`run` without
--chat) has ``messages`` null and only ``prompt``. ``settings`` holds the sampling parameters
that differ from SamplingParams' defaults.

Logging is on by default; ``--no-log`` on a command or ``PYLLM_LOG=0`` turns it off. A log that
cannot be written never fails the command: it is reported once as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("pyllm")

FILENAME = "logs.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    system TEXT,
    messages TEXT,
    settings TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    seconds REAL,
    first_token_seconds REAL,
    finish_reason TEXT
);
CREATE INDEX IF NOT EXISTS responses_conversation ON responses (conversation_id);
"""


def enabled(no_log: bool = False) -> bool:
    """Whether to log: not with --no-log, nor with PYLLM_LOG set to 0/false/no/off."""
    if no_log:
        return False
    return os.environ.get("PYLLM_LOG", "1").strip().lower() not in ("0", "false", "no", "off")


def db_path() -> Path:
    from pyllm.weights.pull import pyllm_home

    return Path(pyllm_home()) / FILENAME


@contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        db.executescript(_SCHEMA)
        with db:  # one transaction, committed on success
            yield db
    finally:
        db.close()


def new_conversation_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Response:
    """One logged reply (a row of ``responses``)."""

    id: int
    conversation_id: str
    created: str
    model: str
    prompt: str
    system: str | None
    messages: list[dict[str, str]] | None
    settings: dict[str, Any]
    reply: str
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float | None
    first_token_seconds: float | None
    finish_reason: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Response:
        data = dict(row)
        data["messages"] = json.loads(data["messages"]) if data["messages"] else None
        data["settings"] = json.loads(data["settings"] or "{}")
        return cls(**data)

    def conversation(self) -> list[dict[str, str]]:
        """The conversation up to and including this reply, as chat messages."""
        messages = (
            list(self.messages)
            if self.messages is not None
            else (
                ([{"role": "system", "content": self.system}] if self.system else [])
                + [{"role": "user", "content": self.prompt}]
            )
        )
        return [*messages, {"role": "assistant", "content": self.reply}]


def changed_settings(params: Any) -> dict[str, Any]:
    """The fields of a SamplingParams that differ from SamplingParams() defaults (what a log
    row's ``settings`` holds)."""
    from pyllm.sampling_params import SamplingParams

    base = SamplingParams().to_dict()
    return {k: v for k, v in params.to_dict().items() if v != base[k]}


def record(
    *,
    conversation_id: str,
    model: str,
    prompt: str,
    reply: str,
    messages: Sequence[Mapping[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    seconds: float | None = None,
    first_token_seconds: float | None = None,
    finish_reason: str | None = None,
    path: Path | None = None,
) -> int | None:
    """Log one reply; returns its row id, or None when it could not be written (warned once)."""
    system = next((m["content"] for m in messages or () if m.get("role") == "system"), None)
    row = (
        conversation_id,
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        model,
        prompt,
        system,
        json.dumps(list(messages), ensure_ascii=False) if messages is not None else None,
        json.dumps(settings or {}, ensure_ascii=False),
        reply,
        prompt_tokens,
        completion_tokens,
        seconds,
        first_token_seconds,
        finish_reason,
    )
    try:
        with connect(path) as db:
            cur = db.execute(
                "INSERT INTO responses (conversation_id, created, model, prompt, system, messages,"
                " settings, reply, prompt_tokens, completion_tokens, seconds,"
                " first_token_seconds, finish_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            return cur.lastrowid
    except (sqlite3.Error, OSError) as e:
        _warn_once(
            f"could not write the conversation log {path or db_path()}: {e} "
            f"(PYLLM_LOG=0 turns logging off)"
        )
        return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def recent(
    n: int | None = 3, query: str | None = None, *, path: Path | None = None
) -> list[Response]:
    """The last `n` replies (all when None), oldest first; `query` keeps those whose prompt,
    system prompt or reply contains it (case-insensitive)."""
    if not (path or db_path()).exists():
        return []
    sql, args = "SELECT * FROM responses", list[Any]()
    if query:
        sql += (
            " WHERE prompt LIKE ? ESCAPE '\\' OR reply LIKE ? ESCAPE '\\' "
            "OR system LIKE ? ESCAPE '\\'"
        )
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args = [pattern] * 3
    sql += " ORDER BY id DESC"
    if n is not None:
        sql += " LIMIT ?"
        args.append(n)
    with connect(path) as db:
        rows = db.execute(sql, args).fetchall()
    return [Response.from_row(r) for r in reversed(rows)]


def last_response(*, path: Path | None = None) -> Response | None:
    """The most recent reply (its conversation is the one `--continue` resumes)."""
    found = recent(1, path=path)
    return found[0] if found else None
