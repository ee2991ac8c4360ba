"""Serve an app with uvicorn; SIGTERM (or Ctrl-C) drains instead of killing.

On the signal uvicorn stops accepting connections and waits up to `grace` seconds for the
requests in flight (streams included) to finish, then cancels the rest; the app answers 503 to
anything new that still reaches it meanwhile. The process then exits with status 0.
"""

from __future__ import annotations

import math
import signal
import socket
from typing import Any

import uvicorn


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._pyllm_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = getattr(self._pyllm_app.state, "pyllm", None)
        if state is not None:
            state.draining = True
        super().handle_exit(sig, frame)


def make_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace: float = 30.0,
    log_level: str = "info",
    access_log: bool = False,
) -> _DrainingServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=math.ceil(grace),
        lifespan="off",
    )
    return _DrainingServer(config, app)


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace: float = 30.0,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain (see the module docstring) and return."""
    server = make_server(app, host=host, port=port, grace=grace, log_level=log_level)
    # uvicorn re-raises the signal it caught once it has shut down, under the handler that was
    # installed before it started: make that one harmless so a drained server exits with 0.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
