"""Key bindings of the prompt: multi-line input and Ctrl-C.

- Enter sends the message, except inside a ``\"\"\"`` block (a message that starts with ``\"\"\"``
  and does not yet end with ``\"\"\"``), where it starts a new line.
- Alt-Enter (Esc then Enter) always starts a new line.
- Ctrl-C with text clears the line; Ctrl-C on an empty line shows how to quit, and a second
  Ctrl-C right after it quits (the prompt raises ``EOFError``, as Ctrl-D does).
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

QUOTES = '"""'


def in_open_block(text: str) -> bool:
    """True while ``text`` is an unfinished ``\"\"\"`` block."""
    body = text.lstrip()
    if not body.startswith(QUOTES):
        return False
    return not (len(body.rstrip()) >= 2 * len(QUOTES) and body.rstrip().endswith(QUOTES))


def strip_block(text: str) -> str:
    """The message inside a finished ``\"\"\"`` block (other text unchanged)."""
    body = text.strip()
    if len(body) >= 2 * len(QUOTES) and body.startswith(QUOTES) and body.endswith(QUOTES):
        return body[len(QUOTES) : -len(QUOTES)].strip("\n")
    return text


class QuitArming:
    """A Ctrl-C on an empty line arms quitting; typing (any change of the text) or accepting a
    line disarms it. (prompt-toolkit's ``event.is_repeat`` cannot tell: in a real terminal the
    cursor-position report that follows a redraw arrives as a key in between.)"""

    def __init__(self) -> None:
        self.armed = False
        self._buffer: Buffer | None = None

    def arm(self, buffer: Buffer) -> None:
        self.disarm()
        self.armed, self._buffer = True, buffer
        buffer.on_text_changed += self._on_change

    def disarm(self) -> None:
        if self._buffer is not None:
            self._buffer.on_text_changed -= self._on_change
        self.armed, self._buffer = False, None

    def _on_change(self, _buffer: Buffer) -> None:
        self.disarm()


def make_key_bindings(
    on_first_interrupt: Callable[[], None], arming: QuitArming | None = None
) -> KeyBindings:
    """The REPL's bindings; ``on_first_interrupt`` prints the "press Ctrl-C again" hint.

    The session calls ``arming.disarm()`` after each accepted line.
    """
    kb = KeyBindings()
    arming = arming if arming is not None else QuitArming()

    @Condition
    def block_open() -> bool:
        from prompt_toolkit.application import get_app

        return in_open_block(get_app().current_buffer.text)

    @kb.add("enter", filter=block_open)
    def _newline_in_block(event: KeyPressEvent) -> None:
        event.current_buffer.newline(copy_margin=False)

    @kb.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.newline(copy_margin=False)

    @kb.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.text:
            arming.disarm()
            buffer.reset()
        elif arming.armed:
            arming.disarm()
            event.app.exit(exception=EOFError(), style="class:exiting")
        else:
            arming.arm(buffer)
            from prompt_toolkit.application import run_in_terminal

            run_in_terminal(on_first_interrupt)

    return kb
