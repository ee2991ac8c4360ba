"""The `pyllm` command: a click group whose subcommands are imported only when used.

Each built-in command lives in its own module and is listed in :data:`BUILTIN_COMMANDS` with its
one-line help, so ``pyllm --help`` can describe every command without importing any of them (no
torch, no model code). Plugins add commands through the ``register_commands`` hook; plugin modules
are meant to be light at import, so listing them in ``--help`` costs little (bench/cli_startup.py
measures it).

Errors are handled in one place, :meth:`PyllmGroup.main`: bad input or usage (pyllm's own errors,
``ValueError``, ``OSError`` including a missing file, click usage errors) prints one line
``error: ...`` on stderr and exits with status 2; ``--debug`` (or ``PYLLM_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from pyllm import __version__

# name -> ("module:attribute", "one-line help"). One module per command; add one line per command.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("pyllm.cli.chat:chat", "Chat with a model in the terminal (streamed replies, /help)."),
    "generate": ("pyllm.cli.generate:generate", "Batch generation over a JSONL file (resumable)."),
    "plugins": (
        "pyllm.cli.plugins_cmd:plugins",
        "List installed plugins and what they registered.",
    ),
    "pull": ("pyllm.cli.pull:pull", "Download a model into the cache (default: smollm2)."),
    "models": ("pyllm.cli.models:models", "List the models in the cache with size, type and path."),
    "rm": ("pyllm.cli.rm:rm", "Remove models from the cache."),
    "show": ("pyllm.cli.show:show", "Show a model's architecture, size, quant types and template."),
    "tokenize": ("pyllm.cli.tokenize:tokenize", "Show the token ids and pieces of a text."),
    "run": ("pyllm.cli.run:run", "Generate once from a prompt and stream the text (--json)."),
    "perplexity": ("pyllm.cli.perplexity:perplexity", "Perplexity of a model on a text file."),
    "serve": ("pyllm.cli.serve:serve", "Serve a model over an OpenAI-compatible HTTP API."),
    "embed": ("pyllm.cli.embed:embed", "Embedding vectors of texts (mean-pooled hidden states)."),
    "aliases": ("pyllm.cli.aliases:aliases", "Short names for models (set, list, remove)."),
    "logs": ("pyllm.cli.logs:logs", "Show the logged prompts and replies of run and chat."),
}

EXIT_BAD_INPUT = 2  # bad input or usage, like click's own usage errors
EXIT_INTERNAL = 1  # a bug: anything pyllm did not expect

log = logging.getLogger("pyllm")


def _load_attr(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _debug_requested(args: Sequence[str]) -> bool:
    """`--debug` among the group's own options (before the subcommand), or PYLLM_DEBUG=1."""
    if os.environ.get("PYLLM_DEBUG", "") not in ("", "0"):
        return True
    for a in args:
        if a == "--debug":
            return True
        if not a.startswith("-"):
            return False  # the subcommand's name: what follows is the subcommand's
    return False


def _describe(exc: BaseException) -> str:
    """One line for an error, naming the file or value at fault when the exception knows it."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {os.fsdecode(exc.filename)}"
    return " ".join(str(exc).split()) or type(exc).__name__


class _StderrHandler(logging.Handler):
    """Writes `warning: ...` lines to whatever sys.stderr is at the time (CliRunner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(debug: bool) -> None:
    """Warnings (e.g. a broken plugin) go to stderr as `warning: ...`; --debug adds debug logs."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.DEBUG if debug else logging.WARNING)


class PyllmGroup(click.Group):
    """A group that imports built-in commands (BUILTIN_COMMANDS) and plugin commands on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(BUILTIN_COMMANDS) | set(self.commands) | set(_plugin_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in BUILTIN_COMMANDS:
            return _load_attr(BUILTIN_COMMANDS[cmd_name][0])
        return _plugin_commands().get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Built-ins are described from the table: --help imports none of their modules.
        rows = [(name, BUILTIN_COMMANDS[name][1]) for name in sorted(BUILTIN_COMMANDS)]
        rows += [(n, c.get_short_help_str(80)) for n, c in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
        plugin_rows = [
            (name, cmd.get_short_help_str(80))
            for name, cmd in sorted(_plugin_commands().items())
            if not cmd.hidden
        ]
        if plugin_rows:
            with formatter.section("Plugin commands"):
                formatter.write_dl(plugin_rows)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        args = list(sys.argv[1:] if args is None else args)
        debug = _debug_requested(args)
        _setup_logging(debug)
        try:
            rv = super().main(
                args, prog_name or "pyllm", complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.UsageError as e:
            hint = ""
            if e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            _fail(f"{e.format_message()}{hint}", EXIT_BAD_INPUT, e, debug)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code, e, debug)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # `pyllm ... | head`: the reader left. Point stdout at devnull so the interpreter's
            # final flush does not raise again, and exit quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (ValueError, OSError) as e:
            # pyllm's own errors (ModelFormatError is a ValueError), bad values, missing files.
            _fail(_describe(e), EXIT_BAD_INPUT, e, debug)
        except Exception as e:  # noqa: BLE001 - the one place unexpected errors are reported
            from pyllm.errors import PyllmError

            if isinstance(e, PyllmError):
                _fail(_describe(e), EXIT_BAD_INPUT, e, debug)
            _fail(
                f"internal error: {type(e).__name__}: {_describe(e)}"
                + ("" if debug else " (run with --debug for the traceback)"),
                EXIT_INTERNAL,
                e,
                debug,
            )
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int, exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _plugin_commands() -> dict[str, click.Command]:
    """Commands registered by plugins (the plugin host refuses built-in names), then a command
    for each registered task that has none of its own (pyllm/cli/task_commands.py)."""
    from pyllm import plugins
    from pyllm.cli.task_commands import task_commands

    registered = plugins.commands()
    return {**registered, **task_commands({*BUILTIN_COMMANDS, *registered})}


@click.group(name="pyllm", cls=PyllmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="pyllm", message="%(prog)s %(version)s"
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs (also PYLLM_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """pyllm: chat with and generate text from local language models.

    Models are GGUF files or Hugging Face folders; `smollm2` names the default model. Tokenizers,
    samplers, tasks, model sources and commands come from plugins (see `pyllm plugins`).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (`pyllm = "pyllm.cli.main:main"`)."""
    cli.main(args=argv, prog_name="pyllm")
    raise SystemExit(0)  # pragma: no cover - cli.main always exits


if __name__ == "__main__":  # pragma: no cover
    main()
