"""Slash commands: a registry filled by a decorator, the built-in commands, and plugin commands.

A handler is called as ``handler(session, arg)``: ``session`` is the running
:class:`pyllm.repl.session.ChatSession` and ``arg`` the rest of the line after the command name
(stripped; empty when none). Plugins add commands through the ``register_repl_commands`` hook;
:func:`build_registry` merges them after the built-ins (a built-in name wins over a plugin's).

What a plugin handler may use of the session: ``session.backend`` (a ChatBackend; the real model
is ``session.llm``, None with a fake backend), ``session.params`` (SamplingParams),
``session.conversation``, ``session.echo(text)`` / ``session.notice(text)`` /
``session.error(text)`` to print, and ``session.send(text)`` to run a chat turn.
"""

from __future__ import annotations

import difflib
import json
import logging
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyllm.repl.conversation import Conversation, ConversationFileError
from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.repl.session import ChatSession

log = logging.getLogger("pyllm.repl")

Handler = Callable[["ChatSession", str], Any]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str
    usage: str = ""
    aliases: tuple[str, ...] = ()
    source: str = ""  # "" for built-ins, else the plugin's name

    @property
    def synopsis(self) -> str:
        return self.usage or f"/{self.name}"


class CommandRegistry:
    """name or alias -> :class:`Command`, in registration order."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._lookup: dict[str, str] = {}

    def register(
        self,
        name: str,
        handler: Handler,
        help: str,
        aliases: tuple[str, ...] = (),
        *,
        usage: str = "",
        source: str = "",
    ) -> Command:
        name = name.lstrip("/").lower()
        aliases = tuple(a.lstrip("/").lower() for a in aliases)
        taken = [n for n in (name, *aliases) if n in self._lookup]
        if taken:
            raise ValueError(f"REPL command name /{taken[0]} is already taken")
        command = Command(name, handler, help, usage, aliases, source)
        self._commands[name] = command
        for n in (name, *aliases):
            self._lookup[n] = name
        return command

    def command(
        self, name: str, help: str, *, usage: str = "", aliases: tuple[str, ...] = ()
    ) -> Callable[[Handler], Handler]:
        """Decorator: ``@registry.command("help", "Show the commands.", aliases=("?",))``."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, handler, help, aliases, usage=usage)
            return handler

        return decorate

    def get(self, name: str) -> Command | None:
        key = self._lookup.get(name.lstrip("/").lower())
        return self._commands[key] if key else None

    def suggest(self, name: str) -> str | None:
        """The nearest command name or alias to a mistyped ``name``, if any is close."""
        near = difflib.get_close_matches(
            name.lstrip("/").lower(), list(self._lookup), n=1, cutoff=0.5
        )
        return near[0] if near else None

    def names(self) -> list[str]:
        """Every name and alias."""
        return list(self._lookup)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def copy(self) -> CommandRegistry:
        new = CommandRegistry()
        new._commands, new._lookup = dict(self._commands), dict(self._lookup)
        return new


# ------------------------------------------------------------------------------------------------
# REPL settings (besides the sampling parameters) that /set changes
# ------------------------------------------------------------------------------------------------


def parse_on_off(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("on", "true", "yes", "1"):
        return True
    if low in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{name} must be on or off, got {value!r}")


# name -> (parser, help)
SETTINGS: dict[str, tuple[Callable[[str, str], Any], str]] = {
    "markdown": (parse_on_off, "re-render finished replies as Markdown (on/off)"),
    "stats": (parse_on_off, "print tokens, tokens/s and time to first token after each reply"),
}


def settable_names() -> list[str]:
    return [*SETTINGS, *SamplingParams.field_names()]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def changed_params(params: SamplingParams) -> dict[str, Any]:
    """The fields of ``params`` that differ from SamplingParams() defaults."""
    from pyllm.logs import changed_settings

    return changed_settings(params)


# ------------------------------------------------------------------------------------------------
# Built-in commands
# ------------------------------------------------------------------------------------------------

BUILTINS = CommandRegistry()
command = BUILTINS.command

KEYS_HELP = """\
Type a message and press Enter. Alt-Enter (or Esc then Enter) starts a new line; a message that
starts with \"\"\" goes on until a line that ends with \"\"\". Start with // to send a text that
begins with /. Ctrl-C stops a reply; at the prompt it clears the line, and twice on an empty line
quits, like Ctrl-D and /exit."""


@command(
    "help", "Show the commands, or one command's help.", usage="/help [COMMAND]", aliases=("?",)
)
def _help(session: ChatSession, arg: str) -> None:
    if arg:
        cmd = session.registry.get(arg)
        if cmd is None:
            session.unknown_command(arg)
            return
        aliases = f"  (also {', '.join('/' + a for a in cmd.aliases)})" if cmd.aliases else ""
        session.echo(f"{cmd.synopsis}{aliases}\n  {cmd.help}")
        if cmd.name == "set":
            session.echo(
                "  REPL settings: "
                + ", ".join(SETTINGS)
                + "; sampling: "
                + ", ".join(SamplingParams.field_names())
            )
        return
    commands = list(session.registry)
    screen = session.renderer.console.width
    width = min(max(len(c.synopsis) for c in commands) + 2, max(screen // 3, 12))
    for heading, group in (
        ("Commands", [c for c in commands if not c.source]),
        ("Plugin commands", [c for c in commands if c.source]),
    ):
        if group:
            session.echo(f"{heading}:")
            for c in group:
                session.echo(hanging(c.synopsis, c.help, width, screen))
    session.echo(textwrap.fill(" ".join(KEYS_HELP.split()), width=max(screen - 1, 20)))


def hanging(term: str, text: str, width: int, screen: int) -> str:
    """``  TERM  text`` with the text wrapped to the screen and its later lines indented under
    its first (a term longer than the column gets a line of its own)."""
    indent = " " * (2 + width)
    lines = textwrap.wrap(
        text, width=max(screen - 1 - len(indent), 20), break_on_hyphens=False
    ) or [""]
    head = f"  {term:<{width}}"
    if len(term) + 2 > width:
        return "\n".join([f"  {term}", *(indent + line for line in lines)])
    return "\n".join([head + lines[0], *(indent + line for line in lines[1:])])


@command(
    "system", "Set the system prompt (no text: show it; 'none' removes it).", usage="/system [TEXT]"
)
def _system(session: ChatSession, arg: str) -> None:
    if not arg:
        shown = system_prompt_shown(session)
        session.echo("(no system prompt)" if shown == "(none)" else shown)
        return
    session.conversation.system = None if arg.lower() in ("none", "off") else arg
    session.refresh_context()
    session.notice(
        "system prompt removed" if session.conversation.system is None else "system prompt set"
    )


@command(
    "set",
    "Set a sampling parameter (e.g. temperature 0.7, samplers ...) or a REPL "
    "setting (markdown on/off); as in ollama, '/set parameter NAME VALUE' and "
    "'/set system TEXT' work too.",
    usage="/set NAME VALUE",
)
def _set(session: ChatSession, arg: str) -> None:
    name, _, value = arg.partition(" ")
    name, value = name.strip().lower().replace("-", "_"), value.strip()
    if name == "system":  # ollama's spelling of /system TEXT
        _system(session, value)
        return
    if name == "parameter":  # ollama's /set parameter NAME VALUE
        if not value:
            session.error("usage: /set parameter NAME VALUE")
            return
        _set(session, value)
        return
    if name == "n" and value and value.strip("\"' ") != "1":
        session.error(
            f"n = {value}: the chat shows one reply per message, so n stays 1 "
            f"(pyllm run --set n={value} prints several completions)"
        )
        return
    if not name:
        for key in SETTINGS:
            session.echo(f"  {key} = {_format_value(session.settings[key])}")
        for key, v in session.params.to_dict().items():
            session.echo(f"  {key} = {_format_value(v)}")
        return
    if name in ("format", "schema") and value:  # structured output (docs/structured.md)
        from pyllm.constraints.cli import repl_overrides

        try:
            session.params = session.params.replace(**repl_overrides(name, value))
        except ValueError as e:
            session.error(str(e))
            return
        session.notice(f"{name} = {value}")
        return
    if name not in SETTINGS and name not in SamplingParams.field_names():
        near = difflib.get_close_matches(name, settable_names(), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else " (/help set lists them)"
        session.error(f"unknown setting {name!r}{hint}")
        return
    if not value:
        current = session.settings[name] if name in SETTINGS else getattr(session.params, name)
        session.echo(f"{name} = {_format_value(current)}")
        return
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    try:
        if name in SETTINGS:
            session.settings[name] = SETTINGS[name][0](name, value)
            session.apply_settings()
            shown = session.settings[name]
        else:
            session.params = SamplingParams.from_mapping({name: value}, base=session.params)
            shown = getattr(session.params, name)
    except ValueError as e:
        session.error(str(e))
        return
    session.notice(f"{name} = {_format_value(shown)}")


@command(
    "show",
    "Show the model, parameters, context use; '/show info' (the model), "
    "'/show system', '/show template', '/show conversation', '/show params'.",
    usage="/show [info|system|template|conversation|params]",
)
def _show(session: ChatSession, arg: str) -> None:
    what = arg.lower()
    backend = session.backend
    if what in ("template", "t"):
        session.echo(backend.chat_template)
        return
    if what in ("conversation", "messages", "c"):
        session.show_transcript()
        return
    if what in ("params", "parameters", "p"):
        for key, v in session.params.to_dict().items():
            session.echo(f"  {key} = {_format_value(v)}")
        return
    if what in ("system", "s"):
        session.echo(system_prompt_shown(session))
        return
    if what in ("info", "i"):
        info = getattr(backend, "info", None)
        rows = (
            info()
            if info is not None
            else [("model", backend.model_name), ("context", f"{backend.context_length} tokens")]
        )
        width = max(len(k) for k, _ in rows) + 2
        for key, value in rows:
            session.echo(hanging(key, str(value), width, session.renderer.console.width))
        return
    if what:
        session.error(
            f"/show {what}: unknown topic; try info, system, template, conversation or params"
        )
        return
    used, total = session.context_used, backend.context_length
    cut = sum(1 for m in session.conversation.messages if m.get("cut"))
    changed = changed_params(session.params)
    device = getattr(backend, "device", None)  # optional in a ChatBackend
    rows = [
        ("model", backend.model_name + (f" on {device}" if device else "")),
        ("context", f"{used} / {total} tokens ({100 * used / max(total, 1):.0f}%)"),
        ("system", system_prompt_shown(session)),
        ("messages", f"{len(session.conversation.messages)}" + (f" ({cut} cut)" if cut else "")),
        (
            "sampling",
            " ".join(f"{k}={_format_value(v)}" for k, v in changed.items()) or "(defaults)",
        ),
        ("settings", " ".join(f"{k}={_format_value(v)}" for k, v in session.settings.items())),
        ("template", first_line(backend.chat_template) + "  (/show template)"),
    ]
    for key, value in rows:
        session.echo(hanging(key, value, 10, session.renderer.console.width))


def system_prompt_shown(session: ChatSession) -> str:
    """The system prompt the model sees: the one set, else the one the chat template adds by
    itself (SmolLM2's names the model), else "(none)"."""
    if session.conversation.system:
        return session.conversation.system
    default = getattr(session.backend, "template_system_prompt", None)
    return (
        f"{default}  (added by the chat template; /set system TEXT replaces it)"
        if default
        else "(none)"
    )


def first_line(text: str, limit: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@command("reset", "Forget the conversation (the system prompt stays).", aliases=("clear",))
def _reset(session: ChatSession, arg: str) -> None:
    session.conversation.reset()
    session.refresh_context()
    session.notice("conversation cleared")


@command("regen", "Answer the last message again (the last reply is replaced).", aliases=("retry",))
def _regen(session: ChatSession, arg: str) -> None:
    session.regenerate()


@command("save", "Save the conversation as JSON.", usage="/save FILE")
def _save(session: ChatSession, arg: str) -> None:
    if not arg:
        session.error("usage: /save FILE")
        return
    try:
        path = session.conversation.save(
            arg, model=session.backend.model_name, sampling=changed_params(session.params)
        )
    except OSError as e:
        session.error(f"cannot save to {arg}: {e.strerror or e}")
        return
    session.notice(f"saved {len(session.conversation.messages)} messages to {path}")


@command(
    "load", "Load a conversation saved with /save (replaces the current one).", usage="/load FILE"
)
def _load(session: ChatSession, arg: str) -> None:
    if not arg:
        session.error("usage: /load FILE")
        return
    try:
        conversation, data = Conversation.read_file(arg)
    except OSError as e:
        session.error(f"cannot read {arg}: {e.strerror or e}")
        return
    except ConversationFileError as e:
        session.error(f"not a conversation file: {e}")
        return
    sampling = data.get("sampling") or {}
    try:
        params = (
            SamplingParams.from_mapping(sampling, base=session.params)
            if isinstance(sampling, dict) and sampling
            else session.params
        )
    except ValueError as e:
        session.error(f"not a conversation file: {arg}: 'sampling': {e}")
        return
    session.conversation, session.params = conversation, params
    session.refresh_context()
    session.notice(
        f"loaded {len(conversation.messages)} messages from {Path(arg).expanduser()}"
        + (f"; sampling: {', '.join(sampling)}" if sampling else "")
    )


@command(
    "read", "Put a text file's contents in the next prompt, to edit or send.", usage="/read FILE"
)
def _read(session: ChatSession, arg: str) -> None:
    if not arg:
        session.error("usage: /read FILE")
        return
    path = Path(arg).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        session.error(f"{path}: not a UTF-8 text file")
        return
    except OSError as e:
        session.error(f"cannot read {arg}: {e.strerror or e}")
        return
    session.next_default = text.rstrip("\n")
    session.notice(f"{path.name}: {len(text)} characters in the prompt below; Enter sends them")


@command("tokens", "Show the tokens of a text (ids and pieces).", usage="/tokens TEXT")
def _tokens(session: ChatSession, arg: str) -> None:
    if not arg:
        session.error("usage: /tokens TEXT")
        return
    ids, pieces = session.backend.tokenize(arg)
    session.echo(f"{len(ids)} tokens")
    session.echo("  ".join(f"{i}:{p!r}" for i, p in zip(ids, pieces)))


@command("stats", "Show the last reply's figures and the context use.")
def _stats(session: ChatSession, arg: str) -> None:
    used, total = session.context_used, session.backend.context_length
    session.echo(f"  context         {used} / {total} tokens")
    stats = session.backend.last_stats
    if stats is None:
        session.echo("  no reply yet")
        return
    tps = stats.tokens_per_s
    session.echo(f"  prompt tokens   {stats.prompt_tokens}")
    session.echo(
        f"  reply tokens    {stats.tokens}"
        + (f" ({stats.finish_reason})" if stats.finish_reason else "")
    )
    session.echo("  first token     " + (f"{stats.ttft:.3f} s" if stats.ttft is not None else "-"))
    session.echo("  tokens/s        " + (f"{tps:.1f}" if tps is not None else "-"))
    session.echo(f"  total time      {stats.seconds:.2f} s")


@command("exit", "Leave the REPL (Ctrl-D does too).", aliases=("quit", "bye"))
def _exit(session: ChatSession, arg: str) -> None:
    session.running = False


# ------------------------------------------------------------------------------------------------
# Merging in plugin commands
# ------------------------------------------------------------------------------------------------


def plugin_commands() -> list[Any]:
    """The REPL commands plugins registered (objects with name, handler, help, aliases, plugin).

    Empty when the plugin system is unavailable; a failure there is logged, never raised.
    """
    try:
        from pyllm import plugins
    except ImportError:
        return []
    try:
        return list(plugins.repl_commands().values())
    except Exception as e:  # noqa: BLE001 - the REPL works without plugins
        log.warning("REPL plugin commands unavailable: %s: %s", type(e).__name__, e)
        return []


def task_adapters() -> dict[str, Any]:
    """name -> TaskAdapter of every registered task; empty (a warning logged) when the plugin
    registries cannot be read."""
    try:
        from pyllm import plugins

        return dict(plugins.tasks())
    except Exception as e:  # noqa: BLE001 - the REPL works without plugins
        log.warning("REPL task commands unavailable: %s: %s", type(e).__name__, e)
        return {}


def build_registry(*, with_plugins: bool = True) -> CommandRegistry:
    """The built-in commands, every plugin command whose names are free, then ``/<task>`` for
    each registered task that no command has taken (pyllm/repl/task_command.py)."""
    registry = BUILTINS.copy()
    if not with_plugins:
        return registry
    for rc in plugin_commands():
        source = getattr(rc, "plugin", "") or "plugin"
        aliases = tuple(a for a in getattr(rc, "aliases", ()) if registry.get(a) is None)
        if registry.get(rc.name) is not None:
            log.warning("plugin %r: REPL command /%s is already taken; ignored", source, rc.name)
            continue
        registry.register(rc.name, rc.handler, rc.help, aliases, source=source)
    from pyllm.repl.task_command import task_handler, usage

    for name, adapter in task_adapters().items():
        if registry.get(name) is None:
            registry.register(
                name,
                task_handler(adapter),
                adapter.description,
                usage=usage(adapter),
                source=f"task {name}",
            )
    return registry
