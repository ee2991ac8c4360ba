"""``pyllm chat [MODEL]``: talk to a model in the terminal (the REPL lives in pyllm/repl).

`pyllm run MODEL` with no prompt in a terminal opens the same chat (:func:`start_chat`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from pyllm.cli.options import (
    SAMPLING_DEFAULTS,
    load_llm,
    load_options,
    model_option,
    pick_model,
    pop_sampling_params,
    resolve_device,
    sampling_options,
    system_option,
)


@click.command("chat")
@click.argument("model", required=False, metavar="[MODEL]")
@model_option()
@system_option()
@sampling_options(SAMPLING_DEFAULTS)
@click.option("--no-markdown", is_flag=True, help="Keep replies as plain text.")
@click.option("--no-history", is_flag=True, help="Do not read or write $PYLLM_HOME/history.")
@click.option("--url", default=None, metavar="URL",
              help="Chat with the model of an OpenAI-compatible server (pyllm serve, vLLM, "
                   "llama.cpp...) at URL, e.g. http://127.0.0.1:8000, instead of loading one.")
@click.option("--api-key", default=None, metavar="KEY",
              help="With --url: the server's API key  [env: PYLLM_API_KEY]")
@load_options()
def chat(model: str | None, model_option: str | None, system: str | None, no_markdown: bool,
         no_history: bool, url: str | None, api_key: str | None, int8: bool, kv_dtype: str,
         device: str, ctx: int | None, **kwargs: Any) -> None:
    """Chat with MODEL in the terminal (default: the one `pyllm models default` set, else
    smollm2).

    Replies stream as they are generated; Ctrl-C stops a reply. Type /help for the slash
    commands (/set, /show, /save, /load, ...). When stdin is not a terminal, each line read is
    a message or a command, and replies are printed as plain text. With --ctx, older turns are
    dropped to fit the shorter context.
    """
    model, _ = pick_model(model_option, [model])
    params = pop_sampling_params(kwargs, SAMPLING_DEFAULTS)
    if url is not None:
        from pyllm.repl.http_backend import HTTPBackend

        key = api_key or os.environ.get("PYLLM_API_KEY") or None
        backend = HTTPBackend(url, api_key=key, model=model, context_length=ctx)
        run_chat(backend, params, system=system, markdown=not no_markdown, history=not no_history)
        return
    start_chat(model, params, system=system, markdown=not no_markdown, history=not no_history,
               int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx)


def start_chat(model: str | None, params: Any, *, system: str | None = None,
               markdown: bool = True, history: bool = True, int8: bool = False,
               kv_dtype: str = "float32", device: str = "auto", ctx: int | None = None) -> None:
    """Load `model` and run the REPL on this terminal (or over the lines of a piped stdin)."""
    if params.n != 1:
        raise click.UsageError(f"n={params.n}: the chat shows one reply per message, so n must "
                               f"be 1 (pyllm run --set n={params.n} prints several completions)")
    from pyllm.repl.backend import LLMBackend

    device = resolve_device(device, int8)
    shown = model or "the default model"
    click.echo(f"loading {shown} ..." if device == "cpu" else f"loading {shown} on {device} ...",
               err=True)
    backend = LLMBackend(load_llm(model, int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx))
    run_chat(backend, params, system=system, markdown=markdown, history=history)


def run_chat(backend: Any, params: Any, *, system: str | None = None, markdown: bool = True,
             history: bool = True) -> None:
    """The REPL over `backend` on this terminal (or over the lines of a piped stdin)."""
    from pyllm.repl.session import ChatSession, history_path

    if params.n != 1:
        raise click.UsageError(f"n={params.n}: the chat shows one reply per message, so n must "
                               f"be 1 (pyllm run --set n={params.n} prints several completions)")
    file_history = None
    if history and sys.stdin.isatty():
        from prompt_toolkit.history import FileHistory

        file_history = FileHistory(str(history_path()))
    session = ChatSession(backend, params=params, system=system, history=file_history,
                          markdown=markdown)
    if sys.stdin.isatty():
        session.run()
    else:
        session.run_script(sys.stdin)
