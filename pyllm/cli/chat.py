"""``pyllm chat [MODEL]``: talk to a model in the terminal (the REPL lives in pyllm/repl).

`pyllm run MODEL` with no prompt in a terminal opens the same chat (:func:`start_chat`)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Message


@click.command("chat")
@click.argument("model", required=False, metavar="[MODEL]")
@model_option()
@system_option()
@sampling_options(SAMPLING_DEFAULTS)
@click.option("--no-markdown", is_flag=True, help="Keep replies as plain text.")
@click.option("--no-history", is_flag=True, help="Do not read or write $PYLLM_HOME/history.")
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Chat with the model of an OpenAI-compatible server (pyllm serve, vLLM, "
    "llama.cpp...) at URL, e.g. http://127.0.0.1:8000, instead of loading one.",
)
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="With --url: the server's API key  [env: PYLLM_API_KEY]",
)
@click.option(
    "-c",
    "--continue",
    "continue_",
    is_flag=True,
    help="Continue the last logged conversation (pyllm logs), with its model unless one is named.",
)
@click.option(
    "--no-log", is_flag=True, help="Do not log the turns in $PYLLM_HOME/logs.db (PYLLM_LOG=0 too)."
)
@load_options()
def chat(
    model: str | None,
    model_option: str | None,
    system: str | None,
    no_markdown: bool,
    no_history: bool,
    url: str | None,
    api_key: str | None,
    continue_: bool,
    no_log: bool,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
    **kwargs: Any,
) -> None:
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
        last = last_conversation() if continue_ else None
        run_chat(
            backend,
            params,
            system=system,
            markdown=not no_markdown,
            history=not no_history,
            continued=last,
            log_as=f"{model or 'default'} at {url}" if not no_log else None,
        )
        return
    start_chat(
        model,
        params,
        system=system,
        markdown=not no_markdown,
        history=not no_history,
        continue_=continue_,
        log=not no_log,
        int8=int8,
        kv_dtype=kv_dtype,
        device=device,
        ctx=ctx,
    )


def start_chat(
    model: str | None,
    params: Any,
    *,
    system: str | None = None,
    markdown: bool = True,
    history: bool = True,
    continue_: bool = False,
    log: bool = True,
    int8: bool = False,
    kv_dtype: str = "float32",
    device: str = "auto",
    ctx: int | None = None,
) -> None:
    """Load `model` and run the REPL on this terminal (or over the lines of a piped stdin);
    `continue_` resumes the last logged conversation (and its model when `model` is None)."""
    if params.n != 1:
        raise click.UsageError(
            f"n={params.n}: the chat shows one reply per message, so n must "
            f"be 1 (pyllm run --set n={params.n} prints several completions)"
        )
    from pyllm import settings
    from pyllm.repl.backend import LLMBackend

    last = last_conversation() if continue_ else None
    if last is not None and model is None:
        model = last.model

    device = resolve_device(device, int8)
    shown = model or "the default model"
    click.echo(
        f"loading {shown} ..." if device == "cpu" else f"loading {shown} on {device} ...", err=True
    )
    backend = LLMBackend(load_llm(model, int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx))
    run_chat(
        backend,
        params,
        system=system,
        markdown=markdown,
        history=history,
        continued=last,
        log_as=settings.model_spec(model) if log else None,
    )


def run_chat(
    backend: Any,
    params: Any,
    *,
    system: str | None = None,
    markdown: bool = True,
    history: bool = True,
    continued: Any = None,
    log_as: str | None = None,
) -> None:
    """The REPL over `backend` on this terminal (or over the lines of a piped stdin).

    `continued`: a logged reply (pyllm.logs.Response) whose conversation the chat goes on with;
    `log_as`: the model name turns are logged under (None, or PYLLM_LOG=0: no log)."""
    from pyllm import logs
    from pyllm.repl.session import ChatSession, history_path

    if params.n != 1:
        raise click.UsageError(
            f"n={params.n}: the chat shows one reply per message, so n must "
            f"be 1 (pyllm run --set n={params.n} prints several completions)"
        )
    file_history = None
    if history and sys.stdin.isatty():
        from prompt_toolkit.history import FileHistory

        file_history = FileHistory(str(history_path()))
    logger = TurnLogger(log_as, continued) if log_as is not None and logs.enabled() else None
    session = ChatSession(
        backend,
        params=params,
        system=system,
        history=file_history,
        markdown=markdown,
        on_reply=logger,
    )
    if continued is not None:
        so_far = continued.conversation()
        session.conversation.system = system or next(
            (m["content"] for m in so_far if m["role"] == "system"), None
        )
        for m in so_far:
            if m["role"] != "system":
                session.conversation.add(m["role"], m["content"])
        session.refresh_context()
        session.notice(
            f"continuing conversation {continued.conversation_id} "
            f"({len(session.conversation.messages)} messages; /show conversation)"
        )
    if sys.stdin.isatty():
        session.run()
    else:
        session.run_script(sys.stdin)


def last_conversation() -> Any:
    """The last logged reply, whose conversation `--continue` resumes; a UsageError if none."""
    from pyllm import logs

    last = logs.last_response()
    if last is None:
        raise click.UsageError(f"--continue: no conversation logged yet in {logs.db_path()}")
    return last


class TurnLogger:
    """Logs each chat turn (pyllm/logs.py). Turns share a conversation id until the
    conversation starts again (after /reset, a turn with a single user message)."""

    def __init__(self, model: str, continued: Any = None) -> None:
        self.model = model
        self.conversation_id = continued.conversation_id if continued is not None else None

    def __call__(self, session: Any, messages: list[Message], reply: str, cut: bool) -> None:
        from pyllm import logs
        from pyllm.repl.commands import changed_params

        users = [m for m in messages if m["role"] == "user"]
        if self.conversation_id is None or len(users) <= 1:
            self.conversation_id = logs.new_conversation_id()
        stats = session.backend.last_stats
        logs.record(
            conversation_id=self.conversation_id,
            model=self.model,
            prompt=users[-1]["content"] if users else "",
            reply=reply,
            messages=messages,
            settings=changed_params(session.params),
            prompt_tokens=getattr(stats, "prompt_tokens", None),
            completion_tokens=getattr(stats, "tokens", None),
            seconds=getattr(stats, "seconds", None),
            first_token_seconds=getattr(stats, "ttft", None),
            finish_reason="cut" if cut else getattr(stats, "finish_reason", None),
        )
