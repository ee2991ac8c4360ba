"""The conversation: a system prompt, the user/assistant messages, and what to do when it no longer
fits the model's context.

A message is a dict ``{"role", "content"}``; a reply the user stopped with Ctrl-C also carries
``"cut": True`` (shown in ``/show conversation`` and kept in saved files). The model only ever sees
``role`` and ``content`` (:meth:`Conversation.for_model`).

Overflow policy (:func:`make_room`): before a turn, the conversation plus room for the reply must
fit the context. If it does not, the oldest whole turns (a user message and the replies after it)
are dropped, never the system prompt nor the newest turn; if even the system prompt and the newest
message alone do not fit, the message is refused (:class:`MessageTooLong`) with the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyllm.types import Message

FILE_FORMAT = "pyllm-conversation"
FILE_VERSION = 1
ROLES = ("user", "assistant")

CountTokens = Callable[[Sequence[Message]], int]


class ConversationFileError(ValueError):
    """A file given to ``/load`` is not a conversation (the message says why and where)."""


class MessageTooLong(ValueError):
    """A message that cannot fit the context even alone with the system prompt."""

    def __init__(self, tokens: int, context_length: int, reserve: int) -> None:
        self.tokens, self.context_length, self.reserve = tokens, context_length, reserve
        super().__init__(
            f"message too long: it needs {tokens} tokens (with the system prompt and chat "
            f"template) but the context holds {context_length}, of which {reserve} are kept for "
            f"the reply, so at most {context_length - reserve} fit"
        )


@dataclass
class Conversation:
    """A system prompt (or None) and the user/assistant messages after it."""

    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def for_model(self, extra: str | None = None) -> list[Message]:
        """The messages as the chat template takes them, plus ``extra`` as a new user message."""
        out: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": m["role"], "content": m["content"]} for m in self.messages]
        if extra is not None:
            out.append({"role": "user", "content": extra})
        return out

    def add(self, role: str, content: str, *, cut: bool = False) -> None:
        message: dict[str, Any] = {"role": role, "content": content}
        if cut:
            message["cut"] = True
        self.messages.append(message)

    def turns(self) -> list[list[dict[str, Any]]]:
        """The messages grouped into turns, each starting at a user message."""
        groups: list[list[dict[str, Any]]] = []
        for m in self.messages:
            if m["role"] == "user" or not groups:
                groups.append([])
            groups[-1].append(m)
        return groups

    def drop_oldest_turns(self, n: int) -> None:
        self.messages = [m for turn in self.turns()[n:] for m in turn]

    def pop_reply(self) -> bool:
        """Remove the replies after the last user message (for ``/regen``).

        Returns False, changing nothing, when there is no user message to answer again.
        """
        last_user = max(
            (i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None
        )
        if last_user is None:
            return False
        del self.messages[last_user + 1 :]
        return True

    def reset(self) -> None:
        """Forget the messages; keep the system prompt."""
        self.messages.clear()

    # ---------------------------------------------------------------- files

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "system": self.system,
            "messages": [dict(m) for m in self.messages],
        }

    @classmethod
    def from_json(cls, data: Any) -> Conversation:
        """A conversation from :meth:`to_json`'s dict, or from a plain list of messages (the
        OpenAI form, where a leading system message becomes the system prompt)."""
        if isinstance(data, list):
            data = {"messages": data}
        if not isinstance(data, dict):
            raise ConversationFileError("expected a JSON object with a 'messages' list")
        if data.get("format", FILE_FORMAT) != FILE_FORMAT:
            raise ConversationFileError(
                f"'format' is {data.get('format')!r}, expected {FILE_FORMAT!r}"
            )
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise ConversationFileError("'system' must be a string or null")
        raw = data.get("messages")
        if not isinstance(raw, list):
            raise ConversationFileError("'messages' must be a list")
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise ConversationFileError(f"messages[{i}] must be an object")
            role, content = m.get("role"), m.get("content")
            if role == "system" and i == 0 and system is None and isinstance(content, str):
                system = content
                continue
            if role not in ROLES:
                raise ConversationFileError(
                    f"messages[{i}]['role'] must be one of {', '.join(ROLES)}, got {role!r}"
                )
            if not isinstance(content, str):
                raise ConversationFileError(f"messages[{i}]['content'] must be a string")
            message: dict[str, Any] = {"role": role, "content": content}
            if m.get("cut"):
                message["cut"] = True
            messages.append(message)
        return cls(system=system or None, messages=messages)

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the conversation (and ``extra`` top-level keys, e.g. sampling) as JSON."""
        path = Path(path).expanduser()
        data = {**self.to_json(), **extra}
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def read_file(path: str | Path) -> tuple[Conversation, dict[str, Any]]:
        """Read a conversation file: ``(conversation, the whole JSON object)``.

        Raises :class:`ConversationFileError` for anything that is not a conversation (bad JSON,
        wrong shape, not UTF-8); ``OSError`` for a missing or unreadable file.
        """
        path = Path(path).expanduser()
        text = path.read_bytes()
        try:
            data = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConversationFileError(f"{path}: not a UTF-8 text file ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise ConversationFileError(
                f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        try:
            conversation = Conversation.from_json(data)
        except ConversationFileError as e:
            raise ConversationFileError(f"{path}: {e}") from None
        return conversation, data if isinstance(data, dict) else {}


def make_room(
    conversation: Conversation,
    new_message: str | None,
    count_tokens: CountTokens,
    context_length: int,
    reserve: int,
) -> tuple[int, int]:
    """Drop the oldest turns until the conversation (plus ``new_message``) and ``reserve`` tokens
    for the reply fit ``context_length``.

    Returns ``(turns dropped, prompt tokens)``. Raises :class:`MessageTooLong` (changing nothing)
    when the newest message does not fit even with every older turn gone.
    """
    turns = conversation.turns()
    # With a new message every existing turn may go; otherwise the newest turn must stay.
    keep_last = 0 if new_message is not None else 1
    budget = context_length - reserve
    tokens = count_tokens(conversation.for_model(new_message))
    if tokens <= budget:
        return 0, tokens
    newest = [m for t in turns[len(turns) - keep_last :] for m in t]
    alone = Conversation(conversation.system, newest)
    alone_tokens = count_tokens(alone.for_model(new_message))
    if alone_tokens > budget:
        raise MessageTooLong(alone_tokens, context_length, reserve)
    dropped = 0
    while tokens > budget:
        dropped += 1
        trial = Conversation(conversation.system, [m for t in turns[dropped:] for m in t])
        tokens = count_tokens(trial.for_model(new_message))
    conversation.drop_oldest_turns(dropped)
    return dropped, tokens
