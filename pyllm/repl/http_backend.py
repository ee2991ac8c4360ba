""":class:`HTTPBackend`: the REPL as a client of an OpenAI-compatible server (`pyllm chat --url`).

Replies stream from ``POST /v1/chat/completions`` (server-sent events); closing the stream (Ctrl-C)
closes the connection, which a pyllm server takes as a cancel (it aborts the request and frees
its cache blocks). The standard library's HTTP client is enough, so no client package is needed.

Token counts come from the server's ``POST /tokenize`` where it has one (pyllm and vLLM do);
elsewhere they are estimated at four characters a token, and the context length is the one the
server reports in ``/v1/models`` (pyllm, vLLM: ``max_model_len``), else ``--ctx``, else 4096.
The chat template is applied by the server, so ``/show template`` has nothing to show.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pyllm.errors import PyllmError
from pyllm.repl.backend import ReplyStats
from pyllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Message

# SamplingParams fields that OpenAI's API spells itself; the others go as extra fields, and
# only where they differ from SamplingParams' defaults (a server that is not pyllm may not know
# them).
_OPENAI_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")
_DEFAULTS = SamplingParams()


class ServerError(PyllmError, ConnectionError):
    """The server answered with an error (its message), or could not be reached."""


def request_body(messages: Sequence[Message], params: SamplingParams, model: str) -> dict[str, Any]:
    """The chat completions request for `messages` sampled with `params`."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens,
    }
    for name in _OPENAI_FIELDS:
        value = getattr(params, name)
        if value is not None and value != getattr(_DEFAULTS, name):
            body[name] = value
    if params.stop:
        body["stop"] = list(params.stop)
    if params.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
    for name, value in params.to_dict().items():
        if (
            name in body
            or name in _OPENAI_FIELDS
            or name in ("n", "stop", "logit_bias", "max_tokens", "logprobs")
        ):
            continue
        if value != _DEFAULTS.to_dict()[name]:
            body[name] = value
    return body


class HTTPBackend:
    """:class:`~pyllm.repl.backend.ChatBackend` over an OpenAI-compatible server at `url`."""

    chat_template = "(the server applies the model's chat template)"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        context_length: int | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.base = url.rstrip("/")
        self.base = self.base.removesuffix("/v1")
        self.api_key = api_key
        self.timeout = timeout
        self.last_stats: ReplyStats | None = None
        self.device = self.base
        self._counts: dict[str, int] = {}
        self._can_tokenize = True
        cards = self._json("GET", "/v1/models").get("data") or []
        if model is None:
            if not cards:
                raise ServerError(f"{self.base}/v1/models lists no model: pass --model")
            model = str(cards[0].get("id"))
        self.model_name = model
        card: dict[str, Any] = next((c for c in cards if c.get("id") == model), {})
        reported = card.get("context_length") or card.get("max_model_len")
        self.context_length = int(context_length or reported or 4096)

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ServerError(
                f"{method} {self.base}{path}: HTTP {exc.code}: {_error_message(exc.read())}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach {self.base}: {reason}") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._request(method, path, body) as response:
            return json.loads(response.read() or b"{}")

    # ------------------------------------------------------------------ ChatBackend

    def count_tokens(self, messages: Sequence[Message]) -> int:
        if not messages:
            return 0
        key = json.dumps([[m["role"], m["content"]] for m in messages])
        if key not in self._counts:
            count = None
            if self._can_tokenize:
                try:
                    count = int(
                        self._json(
                            "POST",
                            "/tokenize",
                            {"model": self.model_name, "messages": [dict(m) for m in messages]},
                        )["count"]
                    )
                except (ServerError, KeyError, ValueError, TypeError):
                    self._can_tokenize = False
            if count is None:  # an estimate: about four characters a token, a few per message
                count = sum(len(m["content"]) // 4 + 4 for m in messages) + 2
            self._counts[key] = count
        return self._counts[key]

    def tokenize(self, text: str) -> tuple[list[int], list[str]]:
        try:
            out = self._json(
                "POST",
                "/tokenize",
                {"model": self.model_name, "prompt": text, "add_special_tokens": False},
            )
        except ServerError as exc:
            raise ServerError(f"the server cannot tokenize ({exc})") from None
        ids = [int(i) for i in out.get("tokens", [])]
        return ids, list(out.get("pieces") or [str(i) for i in ids])

    def stream_reply(self, messages: Sequence[Message], params: SamplingParams) -> Iterator[str]:
        messages = list(messages)
        start = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        pieces = 0
        response = self._request(
            "POST", "/v1/chat/completions", request_body(messages, params, self.model_name)
        )
        try:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServerError(_error_message(data.encode()))
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if first is None:
                            first = time.perf_counter() - start
                        pieces += 1
                        yield delta
        finally:
            response.close()  # a pyllm server aborts the request when the connection closes
            prompt = usage.get("prompt_tokens")
            self.last_stats = ReplyStats(
                int(prompt) if prompt is not None else self.count_tokens(messages),
                int(usage.get("completion_tokens", pieces)),
                time.perf_counter() - start,
                first,
                finish,
            )


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return raw.decode("utf-8", "replace")[:300] or "no details"
