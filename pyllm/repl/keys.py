"""Key bindings of the prompt: multi-line input and Ctrl-C.

- Enter sends the message, except inside a ``\"\"\"`` block (a message that starts with ``\"\"\"``
  and does not yet end with ``\"\"\"``), where it starts a new line.
- Alt-Enter (Esc then Enter) always starts a new line.
- Ctrl-C with text clears the line; Ctrl-C on an empty line shows how to quit, and a second
  Ctrl-C right after it quits (the prompt raises ``EOFError``, as Ctrl-D does).
"""

from __future__ import annotations

from collections.abc import Callable

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
        return body[len(QUOTES):-len(QUOTES)].strip("\n")
    return text


def make_key_bindings(on_first_interrupt: Callable[[], None]) -> KeyBindings:
    """The REPL's bindings; ``on_first_interrupt`` prints the "press Ctrl-C again" hint."""
    kb = KeyBindings()
    armed = [False]  # the last key was a Ctrl-C on an empty line

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
            buffer.reset()
            armed[0] = False
        elif armed[0] and event.is_repeat:
            armed[0] = False
            event.app.exit(exception=EOFError(), style="class:exiting")
        else:
            armed[0] = True
            from prompt_toolkit.application import run_in_terminal

            run_in_terminal(on_first_interrupt)

    return kb
