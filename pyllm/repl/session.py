"""The REPL loop: read a line, run a slash command or a chat turn, repeat.

One :class:`~prompt_toolkit.PromptSession` reads every line (history, auto-suggestion, completion,
the toolbar). ``EOFError`` from it (Ctrl-D, or Ctrl-C twice on an empty line) ends the loop.
While a reply streams the prompt is not running, so Ctrl-C arrives as ``KeyboardInterrupt`` in
:meth:`ChatSession._reply`: the stream is closed (the engine cancels the request) and the partial
reply stays in the conversation, marked as cut.

Tests drive a session with ``create_pipe_input()`` / ``DummyOutput()`` and a fake
:class:`~pyllm.repl.backend.ChatBackend` (tests/fake_backend.py); ``stdout`` receives everything
the REPL prints.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from pyllm.repl.backend import ChatBackend
from pyllm.repl.commands import SETTINGS, CommandRegistry, build_registry
from pyllm.repl.completion import ReplCompleter
from pyllm.repl.conversation import Conversation, MessageTooLong, make_room
from pyllm.repl.keys import QuitArming, in_open_block, make_key_bindings, strip_block
from pyllm.repl.render import Renderer
from pyllm.repl.toolbar import make_toolbar
from pyllm.sampling_params import SamplingParams
from pyllm.tokenizer import request_scope
from pyllm.types import Message

PROMPT = ">>> "
CONTINUATION = "... "
_COMMAND = re.compile(r"/(\S*)\s*(.*)", re.DOTALL)


def history_path() -> Path:
    """``$PYLLM_HOME/history`` (the directory is created)."""
    try:
        from pyllm.weights.pull import pyllm_home
    except ImportError:  # the weights module is not there yet: same rule, done here

        def pyllm_home() -> Path:
            home = os.environ.get("PYLLM_HOME")
            return Path(home).expanduser() if home else Path.home() / ".cache" / "pyllm"

    home = Path(pyllm_home())
    home.mkdir(parents=True, exist_ok=True)
    return home / "history"


class ChatSession:
    """A chat with one model.

    :param backend: the model (:class:`~pyllm.repl.backend.ChatBackend`).
    :param params: sampling parameters (``/set`` changes them); default ``SamplingParams()``.
    :param system: the system prompt.
    :param history: prompt history (a ``FileHistory`` in ``pyllm chat``); in memory by default.
    :param input, output: prompt-toolkit input/output (tests: a pipe input, ``DummyOutput()``).
    :param stdout: where replies and messages go (default sys.stdout).
    :param force_terminal, width, height: passed to the :class:`~pyllm.repl.render.Renderer`.
    :param registry: the slash commands (default: built-ins and plugin commands).
    :param on_reply: called after each reply as ``on_reply(session, messages, reply, cut)``:
        ``messages`` the conversation the model was given (``pyllm chat`` logs the turn there).
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        params: SamplingParams | None = None,
        system: str | None = None,
        history: History | None = None,
        input: Input | None = None,
        output: Output | None = None,
        stdout: IO[str] | None = None,
        force_terminal: bool | None = None,
        width: int | None = None,
        height: int | None = None,
        markdown: bool = True,
        registry: CommandRegistry | None = None,
        on_reply: Callable[[ChatSession, list[Message], str, bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.on_reply = on_reply
        self.params = params if params is not None else SamplingParams()
        self.conversation = Conversation(system=system or None)
        self.renderer = Renderer(stdout, force_terminal=force_terminal, width=width, height=height)
        self.settings: dict[str, Any] = {"markdown": markdown, "stats": False}
        assert set(self.settings) == set(SETTINGS)
        self.registry = registry if registry is not None else build_registry()
        self.running = True
        self.next_default = ""  # text for the next prompt (/read)
        self.context_used = 0
        self._history = history if history is not None else InMemoryHistory()
        self._input, self._output = input, output
        self._prompt: PromptSession[str] | None = None
        self._arming = QuitArming()
        self.apply_settings()
        self.refresh_context()

    # ---------------------------------------------------------------- what commands use

    @property
    def llm(self) -> Any:
        """The loaded ``pyllm.api.LLM`` behind the backend, or None (a fake backend)."""
        return getattr(self.backend, "llm", None)

    def echo(self, text: str = "") -> None:
        self.renderer.echo(text)

    def notice(self, text: str) -> None:
        self.renderer.notice(text)

    def error(self, text: str) -> None:
        self.renderer.error(text)

    def apply_settings(self) -> None:
        self.renderer.markdown = bool(self.settings["markdown"])

    def refresh_context(self) -> None:
        """Count the tokens the conversation takes now (for the toolbar, /show, /stats)."""
        messages = self.conversation.for_model()
        with request_scope(warn=False):  # counting only: lost text is told when a turn is sent
            self.context_used = self.backend.count_tokens(messages) if messages else 0

    def reply_reserve(self) -> int:
        """Tokens kept free for the reply when fitting a turn: max_tokens, at most half the
        context (a huge max_tokens would otherwise refuse every message)."""
        return min(self.params.max_tokens, self.backend.context_length // 2)

    def unknown_command(self, name: str) -> None:
        near = self.registry.suggest(name)
        hint = f"; did you mean /{near}?" if near else ""
        self.error(f"unknown command /{name}{hint} (/help lists the commands)")

    def show_transcript(self) -> None:
        if self.conversation.system:
            self.echo(f"[system] {self.conversation.system}")
        if not self.conversation.messages:
            self.echo("(no messages)")
        for m in self.conversation.messages:
            self.echo(f"[{m['role']}{' (cut)' if m.get('cut') else ''}] {m['content']}")

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        """Read and handle lines until /exit, Ctrl-D or a double Ctrl-C."""
        backend = self.backend
        self.notice(
            f"{backend.model_name}, {backend.context_length} tokens of context. "
            "/help for help, Ctrl-D to quit."
        )
        prompt = self._prompt_session()
        while self.running:
            default, self.next_default = self.next_default, ""
            try:
                text = prompt.prompt(PROMPT, default=default)
            except KeyboardInterrupt:  # a SIGINT that reached the prompt
                continue
            except EOFError:
                break
            finally:
                self._arming.disarm()
            self.handle(text)

    def run_script(self, lines: Iterable[str]) -> None:
        """Handle lines read from a pipe (no prompt): ``echo hi | pyllm chat``."""
        block: list[str] = []
        for line in lines:
            if not self.running:
                break
            line = line.rstrip("\n")
            if block or in_open_block(line):
                block.append(line)
                if in_open_block("\n".join(block)):
                    continue
                line, block = "\n".join(block), []
            self.handle(line)
        if block:
            self.handle("\n".join(block))

    def _prompt_session(self) -> PromptSession[str]:
        if self._prompt is None:
            self._prompt = PromptSession(
                history=self._history,
                auto_suggest=AutoSuggestFromHistory(),
                completer=ReplCompleter(lambda: self.registry),
                complete_while_typing=True,
                key_bindings=make_key_bindings(self._quit_hint, self._arming),
                bottom_toolbar=make_toolbar(self),
                prompt_continuation=CONTINUATION,
                input=self._input,
                output=self._output,
            )
        return self._prompt

    def _quit_hint(self) -> None:
        self.notice("(press Ctrl-C again to quit, or Ctrl-D, or /exit)")

    def handle(self, text: str) -> None:
        """One input: a slash command, or a message to the model (``//x`` sends ``/x``)."""
        text = strip_block(text)
        if not text.strip():
            return
        try:
            if text.startswith("/") and not text.startswith("//"):
                self.run_command(text)
            else:
                self.send(text[1:] if text.startswith("//") else text)
        except KeyboardInterrupt:
            self.notice("interrupted")
        except Exception as e:  # noqa: BLE001 - report, keep the REPL alive
            if os.environ.get("PYLLM_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            self.error(f"{type(e).__name__}: {e}")

    def run_command(self, line: str) -> None:
        match = _COMMAND.match(line)
        assert match is not None
        name, arg = match.group(1), match.group(2).strip()
        if not name:
            name = "help"
        command = self.registry.get(name)
        if command is None:
            self.unknown_command(name)
            return
        command.handler(self, arg)

    # ---------------------------------------------------------------- chat turns

    def send(self, text: str) -> None:
        """Add ``text`` as the user's message and stream the reply (making room if needed)."""
        try:
            with request_scope():  # text the vocabulary loses is told here, once a turn
                dropped, prompt_tokens = make_room(
                    self.conversation,
                    text,
                    self.backend.count_tokens,
                    self.backend.context_length,
                    self.reply_reserve(),
                )
        except MessageTooLong as e:
            self.error(str(e))
            return
        if dropped:
            self.notice(
                f"context full: dropped the {dropped} oldest turn"
                f"{'s' if dropped > 1 else ''} (the system prompt is kept)"
            )
        self.conversation.add("user", text)
        before = len(self.conversation.messages)
        try:
            self._reply(prompt_tokens)
        except Exception:
            if len(self.conversation.messages) == before:  # nothing came back: forget the turn
                self.conversation.messages.pop()
            raise

    def regenerate(self) -> None:
        """Replace the last reply with a new one (``/regen``)."""
        if not self.conversation.pop_reply():
            self.error("nothing to regenerate: no message yet")
            return
        try:
            with request_scope():  # text the vocabulary loses is told here, once a turn
                _, prompt_tokens = make_room(
                    self.conversation,
                    None,
                    self.backend.count_tokens,
                    self.backend.context_length,
                    self.reply_reserve(),
                )
        except MessageTooLong as e:
            self.error(str(e))
            return
        self._reply(prompt_tokens)

    def _reply(self, prompt_tokens: int) -> None:
        with request_scope(warn=False):  # make_room told what the vocabulary loses of this turn
            self._stream_reply(prompt_tokens)

    def _stream_reply(self, prompt_tokens: int) -> None:
        room = max(1, self.backend.context_length - prompt_tokens)
        params = self.params
        if params.max_tokens > room:
            params = params.replace(max_tokens=room, min_tokens=min(params.min_tokens, room))
        parts: list[str] = []
        cut = False
        self.renderer.begin_reply()
        messages = self.conversation.for_model()
        stream = self.backend.stream_reply(messages, params)
        try:
            for delta in stream:
                parts.append(delta)
                self.renderer.delta(delta)
        except KeyboardInterrupt:
            cut = True
        except Exception:
            if parts:
                self.conversation.add("assistant", "".join(parts), cut=True)
            self.renderer.end_reply("".join(parts), cut=bool(parts))
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        text = "".join(parts)
        self.conversation.add("assistant", text, cut=cut)
        self.renderer.end_reply(text, cut=cut)
        self.refresh_context()
        if self.on_reply is not None:
            self.on_reply(self, messages, text, cut)
        if self.settings["stats"] and self.backend.last_stats is not None:
            s = self.backend.last_stats
            tps = s.tokens_per_s
            self.notice(
                f"[{s.tokens} tokens"
                + (f", {tps:.1f} tokens/s" if tps is not None else "")
                + (f", first token after {s.ttft:.2f} s" if s.ttft is not None else "")
                + "]"
            )
