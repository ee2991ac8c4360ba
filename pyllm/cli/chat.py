"""``pyllm chat [MODEL]``: talk to a model in the terminal (the REPL lives in pyllm/repl)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import click

from pyllm.cli.options import device_option, int8_option, kv_dtype_option, resolve_device

# The REPL's sampling defaults: tamer than SamplingParams() (temperature 1, no filter), which suits
# small chat models badly. Every one can be changed by an option here or /set in the REPL.
CHAT_DEFAULTS: dict[str, Any] = {
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "max_tokens": 512,
}

# option -> SamplingParams field
SAMPLING_OPTIONS: dict[str, tuple[str, type, str]] = {
    "temperature": ("--temperature", float, "0 = greedy"),
    "top_k": ("--top-k", int, "0 = off"),
    "top_p": ("--top-p", float, "1 = off"),
    "min_p": ("--min-p", float, "0 = off"),
    "typical_p": ("--typical-p", float, "1 = off"),
    "repetition_penalty": ("--repetition-penalty", float, "1 = off"),
    "frequency_penalty": ("--frequency-penalty", float, "0 = off"),
    "presence_penalty": ("--presence-penalty", float, "0 = off"),
    "seed": ("--seed", int, "fixed random stream"),
    "max_tokens": ("--max-tokens", int, "most tokens per reply"),
    "samplers": ("--samplers", str, 'chain, e.g. "penalties;top_k;top_p;min_p;temperature"'),
}


def _sampling_options(f: Any) -> Any:
    for field, (flag, type_, help_) in reversed(SAMPLING_OPTIONS.items()):
        default = CHAT_DEFAULTS.get(field)
        shown = f" [default: {default}]" if default is not None else ""
        f = click.option(flag, field, type=type_, default=None, help=f"{help_}{shown}")(f)
    return f


def chat_params(overrides: dict[str, Any], extra: tuple[str, ...] = ()) -> Any:
    """SamplingParams from the chat defaults, the options given, then ``--set NAME=VALUE``."""
    from pyllm.sampling_params import SamplingParams

    values: dict[str, Any] = dict(CHAT_DEFAULTS)
    values.update({k: v for k, v in overrides.items() if v is not None})
    for item in extra:
        name, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        values[name.strip().replace("-", "_")] = value
    return SamplingParams.from_mapping(values)


@click.command("chat")
@click.argument("model", default="smollm2")
@click.option("--system", "-s", default=None, help="The system prompt.")
@click.option("--context-length", "-c", type=click.IntRange(min=1), default=None,
              help="Cap the context (tokens) below the model's; older turns are dropped to fit.")
@_sampling_options
@click.option("--stop", multiple=True, help="A string that ends a reply (repeatable).")
@click.option("--set", "extra", multiple=True, metavar="NAME=VALUE",
              help="Any other sampling parameter (repeatable), e.g. --set typical_p=0.9.")
@click.option("--no-markdown", is_flag=True, help="Keep replies as plain text.")
@click.option("--no-history", is_flag=True, help="Do not read or write $PYLLM_HOME/history.")
@int8_option()
@kv_dtype_option("KV-cache element type (half precision: half the memory).")
@device_option()
def chat(model: str, system: str | None, context_length: int | None, stop: tuple[str, ...],
         extra: tuple[str, ...], no_markdown: bool, no_history: bool, int8: bool, kv_dtype: str,
         device: str, **sampling: Any) -> None:
    """Chat with MODEL (default: smollm2) in the terminal.

    Replies stream as they are generated; Ctrl-C stops a reply. Type /help for the slash
    commands (/set, /show, /save, /load, ...). When stdin is not a terminal, each line read is
    a message or a command, and replies are printed as plain text.
    """
    if stop:
        sampling["stop"] = list(stop)
    params = chat_params(sampling, extra)
    try:
        from pyllm.api import load
    except ImportError as e:
        raise click.ClickException(f"the model API is not available: {e}") from e
    from pyllm.repl.backend import LLMBackend
    from pyllm.repl.session import ChatSession, history_path

    device = resolve_device(device, int8)
    click.echo(f"loading {model} ..." if device == "cpu" else f"loading {model} on {device} ...", err=True)
    options: dict[str, Any] = {"context_length": context_length} if context_length is not None else {}
    if options and "context_length" not in inspect.signature(load).parameters:
        raise click.UsageError("--context-length needs a pyllm.api.load that takes context_length")
    if int8:
        options["int8_activations"] = True
    if kv_dtype != "float32":
        options["kv_dtype"] = kv_dtype
    if device != "cpu":
        options["device"] = device
    backend = LLMBackend(load(model, **options))
    history = None
    if not no_history and sys.stdin.isatty():
        from prompt_toolkit.history import FileHistory

        history = FileHistory(str(history_path()))
    session = ChatSession(backend, params=params, system=system, history=history,
                          markdown=not no_markdown)
    if sys.stdin.isatty():
        session.run()
    else:
        session.run_script(sys.stdin)
