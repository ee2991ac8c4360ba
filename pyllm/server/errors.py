"""Every error the server answers, in OpenAI's shape `{"error": {message, type, param, code}}`.

Bad input is a 4xx naming what was wrong (never a traceback); an unexpected failure is a 500
with a generic message (the traceback goes to the server's log only). Two ASGI middlewares live
here too: the body size limit (413, checked before the body reaches a route) and the per-route
request counter.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyllm.server.protocol import APIError, ErrorDetail, ErrorResponse

log = logging.getLogger("pyllm.server")

_HTTP_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorDetail(
            message=message,
            type=type or _HTTP_TYPES.get(status, "invalid_request_error"),
            param=param,
            code=code,
        )
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _loc(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body.model_dump(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e.get("type") == "json_invalid":
                detail = (e.get("ctx") or {}).get("error", "")
                return error_response(
                    400, f"the body is not valid JSON: {detail}".rstrip(": "), code="invalid_json"
                )
        e = errors[0] if errors else {}
        where = _loc(e.get("loc", ()))
        if e.get("type") == "missing" and not where:
            return error_response(400, "the request needs a JSON body", code="invalid_json")
        got = e.get("input")
        shown = (
            ""
            if e.get("type") == "missing"
            else f", got {json.dumps(got)[:200]}"
            if _jsonable(got)
            else ""
        )
        return error_response(
            422,
            f"{where or 'body'}: {e.get('msg', 'invalid value')}{shown}",
            param=where or None,
            code="invalid_type",
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            f"internal error ({type(exc).__name__}); see the server log",
            type="server_error",
            code="internal_error",
        )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any route reads
    it (the Content-Length header is checked first; a chunked body is counted as it arrives).
    The body is buffered and replayed to the app, then the original `receive` takes over (the
    routes watch it for the client's disconnect)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(scope, receive, send, declared)
                    return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send, size)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, size: int) -> None:
        response = error_response(
            413,
            f"the request body has {size} bytes or more; the limit is {self.limit} bytes",
            code="body_too_large",
        )
        await response(scope, receive, send)
