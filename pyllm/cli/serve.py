"""`pyllm serve`: the OpenAI-compatible HTTP server (docs/serving.md)."""

from __future__ import annotations

import os
import socket
import sys

import click

from pyllm.cli.options import load_llm, load_options, model_option


@click.command(
    "serve",
    help="Serve a model over an OpenAI-compatible HTTP API (see "
    "docs/serving.md). SIGTERM drains: no new requests, running ones "
    "finish within --grace seconds, then exit 0.",
)
@model_option()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 listens on every interface: set --api-key).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="Require 'Authorization: Bearer KEY' on every /v1 route  [env: PYLLM_API_KEY]",
)
@click.option(
    "--served-model-name",
    "served_name",
    default=None,
    metavar="NAME",
    help="The model id clients send and /v1/models lists  [default: the file's name]",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Allow browser requests from ORIGIN (repeatable; '*' for any). Off by default.",
)
@click.option(
    "--max-waiting",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Requests that may wait for a place in the batch; beyond it: 429 + Retry-After.",
)
@click.option(
    "--max-n",
    type=click.IntRange(min=1, max=128),
    default=16,
    show_default=True,
    help="Most completions one request may ask for (n).",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0.001),
    default=4.0,
    show_default=True,
    help="Largest request body in MiB; larger ones get 413.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running requests get to finish after SIGTERM.",
)
@click.option(
    "--no-log",
    is_flag=True,
    help="Do not log served requests in $PYLLM_HOME/logs.db (PYLLM_LOG=0 too).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@load_options()
def serve(
    model_option: str | None,
    host: str,
    port: int,
    api_key: str | None,
    served_name: str | None,
    cors_origins: tuple[str, ...],
    max_waiting: int,
    max_n: int,
    max_body_mb: float,
    grace: float,
    no_log: bool,
    log_level: str,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
) -> None:
    from pyllm import logs
    from pyllm.server.app import create_app
    from pyllm.server.params import Limits
    from pyllm.server.runner import serve as run_server

    api_key = api_key or os.environ.get("PYLLM_API_KEY") or None
    sock = _listen(host, port)  # before the model loads: a busy port fails at once
    llm = load_llm(model_option, int8=int8, kv_dtype=kv_dtype, device=device, ctx=ctx)
    limits = Limits(
        max_n=max_n, max_waiting=max_waiting, max_body_bytes=int(max_body_mb * (1 << 20))
    )
    app = create_app(
        llm,
        api_key=api_key,
        model_name=served_name,
        cors_origins=cors_origins,
        limits=limits,
        log_requests=logs.enabled(no_log),
    )
    name = app.state.pyllm.model_name
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(
            f"warning: listening on {host} without --api-key: anyone who can reach this "
            f"port can use the model",
            err=True,
        )
    click.echo(
        f"pyllm serve: {name} on http://{host}:{port}/v1 "
        f"(context {llm.context_length} tokens{', API key required' if api_key else ''})",
        err=True,
    )
    sys.stderr.flush()
    run_server(app, host=host, port=port, grace=grace, log_level=log_level, sock=sock)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (so a port in use is a one-line error, not a log line)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # listening now: a second server on the port fails at its bind
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
