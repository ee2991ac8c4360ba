"""Tab completion: command names after ``/``, then each command's argument (``/set`` names and
values, ``/help`` topics, ``/show`` topics, file names for ``/save``, ``/load``, ``/read``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from pyllm.repl.commands import SETTINGS, CommandRegistry, settable_names

FILE_COMMANDS = {"save", "load", "read"}
SHOW_TOPICS = ("template", "conversation", "params")
# Values worth offering for some /set names.
VALUE_CHOICES = {name: ("on", "off") for name in SETTINGS} | {
    "ignore_eos": ("true", "false"),
    "seed": ("none",),
    "samplers": (
        "penalties;logit_bias;top_k;typical_p;top_p;min_p;temperature",
        "top_k;temperature",
        "min_p;temperature",
        "default",
    ),
}


def _matches(
    prefix: str, words: Iterable[str], *, start: int, meta: Callable[[str], str] | None = None
) -> Iterable[Completion]:
    for word in words:
        if word.startswith(prefix):
            yield Completion(word, start_position=start, display_meta=meta(word) if meta else "")


class ReplCompleter(Completer):
    """Completes slash commands from ``registry`` (a callable, so plugin commands added later and
    a replaced registry are seen)."""

    def __init__(self, registry: Callable[[], CommandRegistry]) -> None:
        self._registry = registry
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or text.startswith("//") or "\n" in text:
            return
        registry = self._registry()
        head, space, rest = text[1:].partition(" ")
        if not space:  # still typing the command name

            def help_of(name: str) -> str:
                cmd = registry.get(name)  # one of registry.names(): always found
                return cmd.help if cmd is not None else ""

            yield from _matches(
                head.lower(), sorted(registry.names()), start=-len(head), meta=help_of
            )
            return
        cmd = registry.get(head)
        if cmd is None:
            return
        if cmd.name == "set":
            name, space, value = rest.lstrip().partition(" ")
            if not space:
                yield from _matches(name, settable_names(), start=-len(name))
            else:
                yield from _matches(
                    value.lstrip(), VALUE_CHOICES.get(name, ()), start=-len(value.lstrip())
                )
        elif cmd.name == "help":
            yield from _matches(rest.lstrip(), sorted(registry.names()), start=-len(rest.lstrip()))
        elif cmd.name == "show":
            yield from _matches(rest.lstrip(), SHOW_TOPICS, start=-len(rest.lstrip()))
        elif cmd.name in FILE_COMMANDS:
            arg = rest.lstrip()
            yield from self._paths.get_completions(Document(arg, len(arg)), event)
