"""The OpenAI-compatible HTTP API over one loaded model (FastAPI).

    app = create_app(pyllm.load("smollm2"), api_key="...")   # then serve it with uvicorn

Routes: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models,
POST /v1/tasks/{name}, GET /health, GET /metrics. Every request runs through the model's engine
(continuous batching: concurrent requests share its batch). docs/serving.md describes the API.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from pyllm.constraints.openai import (
    ToolCallMode,
    parse_tool_calls,
    tool_call_mode,
    tools_prompt,
)
from pyllm.generation import Completion as EngineCompletion
from pyllm.server import protocol as P
from pyllm.server.bridge import Generation, until_disconnected
from pyllm.server.errors import BodyLimit, error_response, install_error_handlers
from pyllm.server.metrics import CONTENT_TYPE, Metrics
from pyllm.server.params import Limits, max_new_tokens, sampling_params
from pyllm.server.request_log import RequestLog

log = logging.getLogger("pyllm.server")


class ServerState:
    """What the routes share: the model, its engine front door, limits and metrics."""

    def __init__(
        self,
        llm: Any,
        *,
        model_name: str | None,
        api_key: str | None,
        limits: Limits,
        log_requests: bool = False,
    ) -> None:
        self.llm = llm
        self.model_name = model_name or llm.name
        self.api_key = api_key
        self.limits = limits
        self.frontend = llm.engine
        self.frontend.max_waiting = limits.max_waiting
        self.metrics = Metrics(self.frontend)
        self.draining = False
        self.started = int(time.time())
        self.request_log = RequestLog(self.model_name, log_requests)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise P.APIError(
                404,
                f"The model {model!r} does not exist; this server serves {self.model_name!r}",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        raw = self.llm.tokenizer.token_bytes(token_id)
        return raw.decode("utf-8", "replace"), list(raw)


def create_app(
    llm: Any,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    cors_origins: Sequence[str] = (),
    limits: Limits | None = None,
    log_requests: bool = False,
) -> FastAPI:
    """The FastAPI app serving `llm` (a `pyllm.LLM`). With `api_key`, every /v1 route needs
    `Authorization: Bearer <api_key>`. CORS headers are sent only for `cors_origins`. With
    `log_requests`, every completion goes into the conversation log (pyllm/logs.py)."""
    limits = limits or Limits()
    state = ServerState(
        llm, model_name=model_name, api_key=api_key, limits=limits, log_requests=log_requests
    )
    app = FastAPI(title="pyllm", docs_url=None, redoc_url=None)
    app.state.pyllm = state
    install_error_handlers(app)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.middleware("http")
    async def count_and_drain(request: Request, call_next: Any) -> Response:
        if state.draining and request.url.path.startswith("/v1/"):
            response: Response = error_response(
                503, "the server is shutting down", code="draining", headers={"Retry-After": "5"}
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        state.metrics.requests.labels(
            getattr(route, "path", "other"), str(response.status_code)
        ).inc()
        return response

    auth = [Depends(_authorize)] if api_key else []

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=auth)
    async def models() -> P.ModelList:
        return P.ModelList(
            data=[
                P.ModelCard(
                    id=state.model_name, created=state.started, context_length=llm.context_length
                )
            ]
        )

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model(model_id: str) -> P.ModelCard:
        state.check_model(model_id)
        return P.ModelCard(
            id=state.model_name, created=state.started, context_length=llm.context_length
        )

    @app.post("/v1/chat/completions", dependencies=auth, response_model=None)
    async def chat_completions(req: P.ChatCompletionRequest, request: Request) -> Any:
        return await _chat(state, req, request)

    @app.post("/v1/completions", dependencies=auth, response_model=None)
    async def completions(req: P.CompletionRequest, request: Request) -> Any:
        return await _completions(state, req, request)

    @app.post("/v1/embeddings", dependencies=auth)
    async def embeddings(req: P.EmbeddingRequest) -> P.EmbeddingList:
        return await _embeddings(state, req)

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(req: P.TokenizeRequest) -> P.TokenizeResponse:
        """Token ids of a text or of a conversation as the model will see it (vLLM has the
        same route; `pyllm chat --url` counts its context with it)."""
        if (req.prompt is None) == (req.messages is None):
            raise P.APIError(400, "give either prompt or messages", param="prompt")
        if req.messages is not None:
            ids = _encode(
                state,
                [{"role": m.role, "content": m.text(i)} for i, m in enumerate(req.messages)],
                "messages",
            )
        else:
            ids = llm.tokenizer.encode(req.prompt, add_bos=req.add_special_tokens)
        return P.TokenizeResponse(
            tokens=ids,
            count=len(ids),
            max_model_len=llm.context_length,
            pieces=[state.token_text(i)[0] for i in ids],
        )

    from pyllm.server.tasks import install_task_routes

    install_task_routes(app, state, auth)
    return app


async def _authorize(request: Request) -> None:
    state: ServerState = request.app.state.pyllm
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, (state.api_key or "").encode()):
        raise P.APIError(
            401,
            "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


# ---------------------------------------------------------------------- chat


def _chat_messages(req: P.ChatCompletionRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text(i)} for i, m in enumerate(req.messages)]


def _tool_call_mode(req: P.ChatCompletionRequest) -> ToolCallMode | None:
    """The request's tool-call constraint (tool_choice "required" or a named function)."""
    extra = req.model_extra or {}
    try:
        return tool_call_mode(extra.get("tools"), extra.get("tool_choice"))
    except ValueError as exc:
        raise P.APIError(
            400,
            str(exc),
            param="tools" if "tools" in str(exc) else "tool_choice",
            code="invalid_value",
        ) from None


def _with_tools_prompt(
    messages: list[dict[str, str]], tools: ToolCallMode | None
) -> list[dict[str, str]]:
    """The tools described in a system message, for a chat template that has no tool support
    of its own (the model must know what it may call)."""
    if tools is None:
        return messages
    note = tools_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [
            {"role": "system", "content": note + "\n\n" + messages[0]["content"]},
            *messages[1:],
        ]
    return [{"role": "system", "content": note}, *messages]


def _encode(
    state: ServerState, prompt: Any, param: str, tools: list[dict[str, Any]] | None = None
) -> list[int]:
    try:
        ids = (
            state.llm.encode_prompt(prompt)
            if tools is None
            else state.llm.encode_prompt(prompt, tools=tools)
        )
    except (ValueError, TypeError) as exc:
        raise P.APIError(400, str(exc), param=param) from None
    if not ids:
        raise P.APIError(400, f"{param} is empty (0 tokens)", param=param)
    return ids


def _chat_logprobs(state: ServerState, lps: Any) -> P.ChatChoiceLogprobs:
    entries = []
    for lp in lps:
        text, raw = state.token_text(lp.token_id)
        top = []
        for tid, value in lp.top:
            t, b = state.token_text(tid)
            top.append({"token": t, "logprob": value, "bytes": b})
        entries.append(
            P.ChatLogprobEntry(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top)
        )
    return P.ChatChoiceLogprobs(content=entries)


async def _chat(state: ServerState, req: P.ChatCompletionRequest, request: Request) -> Any:
    state.check_model(req.model)
    started = time.perf_counter()
    tools = _tool_call_mode(req)
    messages = _chat_messages(req)
    if tools is not None and getattr(state.llm.chat_template, "supports_tools", False):
        # the template's own tool format; the reply is still constrained to a call
        ids = _encode(state, messages, "messages", tools=tools.offered())
    else:
        ids = _encode(state, _with_tools_prompt(messages, tools), "messages")
    requested = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = max_new_tokens(requested, len(ids), state.llm.context_length, field)
    logprobs = None
    if req.logprobs:
        logprobs = req.top_logprobs or 0
    elif req.top_logprobs is not None:
        raise P.APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    params = sampling_params(req, max_tokens=max_tokens, logprobs=logprobs, limits=state.limits)
    if tools is not None:  # the reply must be a call of one of the tools: a JSON constraint
        if req.stream:
            raise P.APIError(
                400,
                "streaming is not supported with tool_choice required or a named function",
                param="stream",
            )
        try:
            params = params.replace(json_schema=tools.schema())
        except ValueError as exc:
            raise P.APIError(400, str(exc), param="tool_choice") from None
    state.metrics.prompt_tokens.inc(len(ids))
    gen = Generation(state.frontend, [ids], params, observer=state.metrics)
    rid = P.new_id("chatcmpl")
    users = [m["content"] for m in messages if m.get("role") == "user"]

    async def log_replies(replies: list[tuple[str, str | None, int]]) -> None:
        await state.request_log.replies(
            rid,
            prompt=users[-1] if users else "",
            replies=replies,
            params=params,
            prompt_tokens=len(ids),
            started=started,
            messages=messages,
        )

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse(
            _chat_chunks(
                state,
                gen,
                rid,
                len(ids),
                params.n,
                include_usage,
                logprobs is not None,
                log_replies,
            )
        )
    finals = await until_disconnected(request.receive, _collect(gen, params.n))
    await log_replies([(c.text, c.finish_reason, len(c.token_ids)) for c in finals[0]])
    choices = []
    for i, c in enumerate(finals[0]):
        calls = (
            parse_tool_calls(c.text, P.new_id("call"))
            if tools is not None and c.finish_reason == "stop"
            else None
        )
        message = (
            P.ChatResponseMessage(content=None, tool_calls=calls)
            if calls
            else P.ChatResponseMessage(content=c.text)
        )
        choices.append(
            P.ChatChoice(
                index=i,
                message=message,
                finish_reason="tool_calls" if calls else c.finish_reason,
                logprobs=_chat_logprobs(state, c.logprobs) if logprobs is not None else None,
            )
        )
    return P.ChatCompletion(
        id=rid, model=state.model_name, choices=choices, usage=_usage(len(ids), finals)
    )


async def _collect(gen: Generation, n: int) -> list[list[EngineCompletion]]:
    """Every completion of every prompt of a Generation, in order."""
    out: dict[int, dict[int, EngineCompletion]] = {}
    async for i, ev in _closing(gen):
        if ev.finished:
            out.setdefault(i, {})[ev.output] = ev.completion
    return [[got[j] for j in range(n)] for _, got in sorted(out.items())]


async def _closing(gen: Generation) -> AsyncIterator[Any]:
    """Iterate a Generation; however the iteration ends, what is unfinished is aborted."""
    events = gen.__aiter__()
    try:
        async for item in events:
            yield item
    finally:
        gen.close()
        await events.aclose()


def _usage(prompt_tokens: int, finals: list[list[EngineCompletion]]) -> P.Usage:
    return _usage_counts(prompt_tokens, sum(len(c.token_ids) for group in finals for c in group))


def _usage_counts(prompt_tokens: int, completion_tokens: int) -> P.Usage:
    return P.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def _chat_chunks(
    state: ServerState,
    gen: Generation,
    rid: str,
    prompt_tokens: int,
    n: int,
    include_usage: bool,
    want_logprobs: bool,
    log_replies: Callable[[list[tuple[str, str | None, int]]], Awaitable[None]],
) -> AsyncGenerator[BaseModel, None]:
    def chunk(
        index: int,
        delta: P.ChatDelta,
        finish: str | None = None,
        logprobs: P.ChatChoiceLogprobs | None = None,
    ) -> P.ChatCompletionChunk:
        return P.ChatCompletionChunk(
            id=rid,
            model=state.model_name,
            choices=[
                P.ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
            ],
        )

    for i in range(n):
        yield chunk(i, P.ChatDelta(role="assistant", content=""))
    sent_lp = [0] * n
    generated = 0
    finished: dict[int, tuple[str, str | None, int]] = {}
    async for _, ev in _closing(gen):
        lp = None
        if want_logprobs and ev.completion.logprobs is not None:
            new = ev.completion.logprobs[sent_lp[ev.output] :]
            sent_lp[ev.output] += len(new)
            lp = _chat_logprobs(state, new) if new else None
        if ev.delta or lp is not None:
            yield chunk(ev.output, P.ChatDelta(content=ev.delta), logprobs=lp)
        if ev.finished:
            generated += len(ev.completion.token_ids)
            finished[ev.output] = (
                ev.completion.text,
                ev.completion.finish_reason,
                len(ev.completion.token_ids),
            )
            yield chunk(ev.output, P.ChatDelta(), finish=ev.completion.finish_reason)
    await log_replies([finished[i] for i in sorted(finished)])
    if include_usage:
        yield P.ChatCompletionChunk(
            id=rid,
            model=state.model_name,
            choices=[],
            usage=_usage_counts(prompt_tokens, generated),
        )


def _sse(chunks: AsyncGenerator[BaseModel, None]) -> StreamingResponse:
    """Server-sent events: one `data: {json}` per chunk, then `data: [DONE]`. An error after the
    headers went out is sent as an `error` object (OpenAI's clients raise it)."""

    async def body() -> AsyncIterator[str]:
        try:
            async for c in chunks:
                yield f"data: {c.model_dump_json()}\n\n"
        except P.APIError as exc:
            yield f"data: {exc.body.model_dump_json()}\n\n"
        except Exception as exc:  # the headers are out: report it in the stream
            log.exception("unexpected error while streaming")
            error = P.ErrorDetail(
                message=f"internal error ({type(exc).__name__}); see the server log",
                type="server_error",
                code="internal_error",
            )
            yield f"data: {P.ErrorResponse(error=error).model_dump_json()}\n\n"
        finally:
            await chunks.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------------- text completions


async def _completions(state: ServerState, req: P.CompletionRequest, request: Request) -> Any:
    state.check_model(req.model)
    started = time.perf_counter()
    if req.suffix:
        raise P.APIError(
            400,
            "suffix is not supported: this server completes a prompt only at "
            "its end (put the text after the gap in the prompt instead)",
            param="suffix",
            code="unsupported_parameter",
        )
    prompts = req.prompts()
    if len(prompts) > state.limits.max_prompts:
        raise P.APIError(
            400,
            f"prompt: at most {state.limits.max_prompts} prompts per request, got {len(prompts)}",
            param="prompt",
        )
    if req.logprobs is not None and not 0 <= req.logprobs <= 5:
        raise P.APIError(
            400,
            f"logprobs must be an integer in 0..5, got {req.logprobs}",
            param="logprobs",
            code="invalid_value",
        )
    ids = [_encode(state, p, "prompt") for p in prompts]
    if req.max_tokens == 0 and req.echo:  # OpenAI's way to score a prompt: echo it, generate none
        return await _echo_only(state, req, ids)
    longest = max(len(x) for x in ids)
    max_tokens = max_new_tokens(req.max_tokens, longest, state.llm.context_length, "max_tokens")
    if req.max_tokens is None:
        max_tokens = min(max_tokens, 16)  # OpenAI's default for /v1/completions
    params = sampling_params(req, max_tokens=max_tokens, logprobs=req.logprobs, limits=state.limits)
    state.metrics.prompt_tokens.inc(sum(len(x) for x in ids))
    echo_parts: list[Any] = [_echo_part(state, x) if req.echo else None for x in ids]
    if req.echo and req.logprobs is not None:
        echo_parts = await _prompt_logprobs(state, ids, req.logprobs)
    gen = Generation(state.frontend, ids, params, observer=state.metrics)
    rid = P.new_id("cmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse(
            _completion_chunks(
                state,
                gen,
                rid,
                ids,
                params.n,
                echo_parts,
                include_usage,
                req.logprobs,
                params,
                started,
            )
        )
    finals = await until_disconnected(request.receive, _collect(gen, params.n))
    choices = []
    for p, group in enumerate(finals):
        for j, c in enumerate(group):
            text, lp = c.text, None
            echo = echo_parts[p]
            if req.logprobs is not None:
                lp = _completion_logprobs(state, c.logprobs or [], len(echo[0]) if echo else 0)
                if echo:
                    lp = _join_logprobs(echo[1], lp)
            if echo:
                text = echo[0] + text
            choices.append(
                P.CompletionChoice(
                    index=p * params.n + j, text=text, logprobs=lp, finish_reason=c.finish_reason
                )
            )
    prompt_tokens = sum(len(x) for x in ids)
    for x, group in zip(ids, finals):
        await state.request_log.replies(
            rid,
            prompt=state.llm.tokenizer.decode(x),
            params=params,
            prompt_tokens=len(x),
            replies=[(c.text, c.finish_reason, len(c.token_ids)) for c in group],
            started=started,
        )
    return P.Completion(
        id=rid, model=state.model_name, choices=choices, usage=_usage(prompt_tokens, finals)
    )


def _echo_part(state: ServerState, ids: list[int]) -> tuple[str, None]:
    return state.llm.tokenizer.decode(ids), None


async def _prompt_logprobs(
    state: ServerState, ids: list[list[int]], top: int
) -> list[tuple[str, P.CompletionLogprobs]]:
    """The prompt's own tokens with their log-probs (None for the first), for echo + logprobs."""
    scored = await asyncio.to_thread(state.llm.score, ids, top)
    out = []
    for x, tokens in zip(ids, scored):
        lp = P.CompletionLogprobs()
        offset = 0
        for s in tokens:
            text, _ = state.token_text(s.token_id)
            lp.tokens.append(text)
            lp.token_logprobs.append(s.logprob)
            lp.top_logprobs.append(
                None if s.logprob is None else {state.token_text(t)[0]: v for t, v in s.top[:top]}
            )
            lp.text_offset.append(offset)
            offset += len(text)
        out.append((state.llm.tokenizer.decode(x), lp))
    return out


async def _echo_only(
    state: ServerState, req: P.CompletionRequest, ids: list[list[int]]
) -> P.Completion:
    parts = (
        await _prompt_logprobs(state, ids, req.logprobs or 0)
        if req.logprobs is not None
        else [(state.llm.tokenizer.decode(x), None) for x in ids]
    )
    choices = [
        P.CompletionChoice(index=i, text=text, logprobs=lp, finish_reason="length")
        for i, (text, lp) in enumerate(parts)
    ]
    prompt_tokens = sum(len(x) for x in ids)
    return P.Completion(
        id=P.new_id("cmpl"),
        model=state.model_name,
        choices=choices,
        usage=_usage_counts(prompt_tokens, 0),
    )


def _completion_logprobs(state: ServerState, lps: Any, start: int) -> P.CompletionLogprobs:
    out = P.CompletionLogprobs()
    offset = start
    for lp in lps:
        text, _ = state.token_text(lp.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({state.token_text(t)[0]: v for t, v in lp.top})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def _join_logprobs(a: P.CompletionLogprobs | None, b: P.CompletionLogprobs) -> P.CompletionLogprobs:
    if a is None:
        return b
    return P.CompletionLogprobs(
        tokens=a.tokens + b.tokens,
        token_logprobs=a.token_logprobs + b.token_logprobs,
        top_logprobs=a.top_logprobs + b.top_logprobs,
        text_offset=a.text_offset + b.text_offset,
    )


async def _completion_chunks(
    state: ServerState,
    gen: Generation,
    rid: str,
    ids: list[list[int]],
    n: int,
    echo_parts: list[Any],
    include_usage: bool,
    logprobs: int | None,
    params: Any,
    started: float,
) -> AsyncGenerator[BaseModel, None]:
    def chunk(
        index: int, text: str, finish: str | None = None, lp: P.CompletionLogprobs | None = None
    ) -> P.Completion:
        return P.Completion(
            id=rid,
            model=state.model_name,
            choices=[P.CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=lp)],
        )

    for p, echo in enumerate(echo_parts):
        if echo:
            for j in range(n):
                yield chunk(p * n + j, echo[0], lp=echo[1])
    sent: dict[int, int] = {}
    generated = 0
    finished: dict[int, dict[int, tuple[str, str | None, int]]] = {}
    async for p, ev in _closing(gen):
        index = p * n + ev.output
        lp = None
        if logprobs is not None and ev.completion.logprobs is not None:
            done = sent.get(index, 0)
            new = ev.completion.logprobs[done:]
            sent[index] = done + len(new)
            lp = _completion_logprobs(state, new, 0) if new else None
        if ev.delta or lp is not None or ev.finished:
            yield chunk(index, ev.delta, ev.completion.finish_reason if ev.finished else None, lp)
        if ev.finished:
            generated += len(ev.completion.token_ids)
            finished.setdefault(p, {})[ev.output] = (
                ev.completion.text,
                ev.completion.finish_reason,
                len(ev.completion.token_ids),
            )
    for p, group in sorted(finished.items()):
        await state.request_log.replies(
            rid,
            prompt=state.llm.tokenizer.decode(ids[p]),
            params=params,
            prompt_tokens=len(ids[p]),
            replies=[group[j] for j in sorted(group)],
            started=started,
        )
    if include_usage:
        prompt_tokens = sum(len(x) for x in ids)
        yield P.Completion(
            id=rid,
            model=state.model_name,
            choices=[],
            usage=_usage_counts(prompt_tokens, generated),
        )


# ---------------------------------------------------------------------- embeddings


async def _embeddings(state: ServerState, req: P.EmbeddingRequest) -> P.EmbeddingList:
    state.check_model(req.model)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts or len(texts) > state.limits.max_embedding_inputs:
        raise P.APIError(
            400,
            f"input: give 1..{state.limits.max_embedding_inputs} strings, got {len(texts)}",
            param="input",
        )
    if req.dimensions is not None:
        raise P.APIError(
            400,
            "dimensions is not supported (the size is the model's width, "
            f"{state.llm.config.n_embd})",
            param="dimensions",
            code="unsupported_parameter",
        )
    ids = [_encode(state, t, f"input[{i}]") for i, t in enumerate(texts)]
    for i, x in enumerate(ids):
        if len(x) > state.llm.context_length:
            raise P.APIError(
                400,
                f"input[{i}] has {len(x)} tokens; the model's maximum context "
                f"length is {state.llm.context_length}",
                param="input",
                code="context_length_exceeded",
            )
    vectors = await asyncio.to_thread(state.llm.embed, texts)
    data = []
    for i, v in enumerate(vectors):
        value: Any = v
        if req.encoding_format == "base64":
            import base64
            import struct

            value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append(P.EmbeddingData(index=i, embedding=value))
    tokens = sum(len(x) for x in ids)
    return P.EmbeddingList(
        data=data,
        model=state.model_name,
        usage=P.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
