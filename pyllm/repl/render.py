"""Everything the REPL prints: streamed replies, then Markdown; notices and errors.

A reply streams as plain text, delta by delta. When it is complete, and the terminal allows it, the
plain text is erased and the answer printed again as Markdown by rich. The erase needs to know how
many rows the plain text took, so it is done only when all of them are still on screen; a reply
longer than the screen stays plain.

``NO_COLOR`` (https://no-color.org: set and not empty) means no escape codes at all from here: no
colours, no styles, no cursor movement, hence no Markdown re-render. Output that is not a terminal
(a pipe, a file, a test) gets the same plain text.

Text from the model is shown with its control characters made visible: a reply cannot move the
cursor, change colours or retitle the terminal.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import IO

from rich.cells import cell_len
from rich.console import Console
from rich.markdown import Markdown

# C0 controls other than tab and newline, DEL, and C1 controls (0x9b is a one-byte CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def no_color_requested() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def sanitize(text: str) -> str:
    """``text`` with control characters shown as ``^X`` (``\\r`` dropped)."""

    def visible(m: re.Match[str]) -> str:
        c = ord(m.group())
        if c == 0x0D:
            return ""
        return f"^{chr(c + 64)}" if c < 0x20 else f"<{c:#04x}>"

    return _CONTROL.sub(visible, text)


def rows_used(text: str, width: int) -> int:
    """Terminal rows ``text`` takes when printed from column 0 on a ``width``-column screen."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline starts a row that is not used yet
    width = max(width, 1)
    return sum(max(1, math.ceil(cell_len(line.expandtabs()) / width)) for line in lines)


class WordWrapper:
    """Streamed text -> the same text with a newline wherever the next word would not fit the
    line (a terminal would otherwise break it anywhere: "fi" at one line's end, "erce" on the
    next). A word is held back until the whitespace after it arrives, since only then is its
    width known; :meth:`flush` writes the last one. A word wider than the screen is left for the
    terminal to break."""

    def __init__(self, width: int) -> None:
        self.width = max(width, 1)
        self.column = 0
        self.word = ""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._word() + "\n")
                self.column = 0
            elif ch in " \t":
                out.append(self._word())
                step = 8 - self.column % 8 if ch == "\t" else 1
                if self.column + step > self.width:  # whitespace at the edge: a new line instead
                    out.append("\n")
                    self.column = 0
                else:
                    out.append(ch)
                    self.column += step
            else:
                self.word += ch
        return "".join(out)

    def flush(self) -> str:
        return self._word()

    def _word(self) -> str:
        word, self.word = self.word, ""
        if not word:
            return ""
        cells = cell_len(word)
        prefix = ""
        if self.column > 0 and self.column + cells > self.width:
            prefix, self.column = "\n", 0
        self.column = (
            (self.column + cells) % self.width if cells > self.width else self.column + cells
        )
        return prefix + word


class Renderer:
    """Prints to ``file`` (default stdout) through a rich console.

    :param force_terminal: treat ``file`` as a terminal (tests); None asks ``file``.
    :param width, height: the screen size (tests); None asks the terminal.
    """

    def __init__(
        self,
        file: IO[str] | None = None,
        *,
        force_terminal: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        self.no_color = no_color_requested()
        self.console = Console(
            file=file if file is not None else sys.stdout,
            force_terminal=force_terminal,
            color_system=None if self.no_color else "auto",
            no_color=self.no_color,
            highlight=False,
            emoji=False,
            markup=False,
            width=width,
            height=height,
        )
        self.markdown = True
        self._streamed: list[str] = []
        self._wrapper: WordWrapper | None = None

    @property
    def fancy(self) -> bool:
        """Whether escape codes may be written (a colour terminal, NO_COLOR unset)."""
        return self.console.is_terminal and self.console.color_system is not None

    # ---------------------------------------------------------------- plain messages

    @property
    def _soft_wrap(self) -> bool:
        # A terminal gets lines broken between words by rich; a pipe or file gets them whole.
        return not self.console.is_terminal

    def echo(self, text: str = "") -> None:
        self.console.print(text, soft_wrap=self._soft_wrap)

    def notice(self, text: str) -> None:
        """A one-line remark from the REPL (dimmed when colour is allowed)."""
        self.console.print(text, style="dim", soft_wrap=self._soft_wrap)

    def error(self, text: str) -> None:
        self.console.print(f"error: {text}", style="red", soft_wrap=self._soft_wrap)

    # ---------------------------------------------------------------- a streamed reply

    def begin_reply(self) -> None:
        self._streamed = []
        self._wrapper = WordWrapper(self.console.width) if self.console.is_terminal else None

    def delta(self, text: str) -> None:
        text = sanitize(text)
        if self._wrapper is not None:  # a terminal: break lines between words, not inside them
            text = self._wrapper.feed(text)
        self._write(text)

    def _write(self, text: str) -> None:
        if not text:
            return
        self._streamed.append(text)
        file = self.console.file
        file.write(text)
        file.flush()

    def end_reply(self, text: str, *, cut: bool = False) -> None:
        """Finish the line; re-render the reply as Markdown when that is on and possible."""
        if self._wrapper is not None:
            self._write(self._wrapper.flush())
            self._wrapper = None
        shown = "".join(self._streamed)
        file = self.console.file
        unfinished = shown and not shown.endswith("\n")
        if unfinished or (cut and not shown and self.console.is_terminal):
            file.write("\n")  # (a terminal echoes Ctrl-C as ^C: the notice goes below it)
            shown += "\n"
        file.flush()
        if cut:
            self.notice("[reply cut: the partial reply is kept in the conversation]")
            return
        if not (self.markdown and self.fancy and text.strip()):
            return
        rows = rows_used(shown, self.console.width)
        if rows >= self.console.height:
            return  # part of it scrolled off: it cannot be erased cleanly, keep it plain
        file.write(f"\x1b[{rows}F\x1b[J")  # up to the reply's first row, clear to the end
        self.console.print(Markdown(sanitize(text)))
