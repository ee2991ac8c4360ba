"""`pyllm serve` through the official openai client (and raw HTTP where the wire format is the
point), against live servers on free ports.

Expected values come from pyllm's Python API on the same model (greedy and seeded decoding are
deterministic), so a test fails on any difference between the server and the library. Most tests
use a tiny random model with SmolLM2's tokenizer (tests/tiny_chat.py: fast, replies are noise);
a few use the default model.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

openai = pytest.importorskip("openai")

from tiny_chat import write_tiny_chat_model

import pyllm
from pyllm import SamplingParams
from pyllm.server.app import create_app
from pyllm.server.params import Limits

KEY = "test-key-123"
CHAT = [{"role": "user", "content": "Tell me about the sea."}]


class LiveServer:
    """uvicorn serving `app` on a free port, in a thread of this process."""

    def __init__(self, app) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started

    def client(self, key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, **kw)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def serving(llm, **options):
    server = LiveServer(create_app(llm, **options))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, smollm2_path):
    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model.gguf", smollm2_path)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return pyllm.load(tiny_path, progress=False)


@pytest.fixture(scope="module")
def server(tiny):
    with serving(tiny, limits=Limits(max_body_bytes=64 << 10)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def idle(llm) -> bool:
    with llm.engine.exclusive() as engine:
        return not engine.has_unfinished() and engine.blocks.num_free_blocks == engine.num_blocks


def wait_idle(llm, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if idle(llm):
            return True
        time.sleep(0.02)
    return False


def post(server, path: str, body, headers=None) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=data, timeout=30,
                      headers={"content-type": "application/json", **(headers or {})})


# ---------------------------------------------------------------------- the happy paths


def test_models_health_tokenize(server, client, tiny):
    (card,) = client.models.list().data
    assert card.id == tiny.name
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = post(server, "/tokenize", {"messages": CHAT}).json()
    assert r["tokens"] == tiny.encode_prompt(CHAT) and r["max_model_len"] == tiny.context_length


def test_chat_matches_the_python_api(client, tiny):
    want = tiny.chat(CHAT, SamplingParams.greedy(max_tokens=12))
    r = client.chat.completions.create(model=tiny.name, messages=CHAT, max_tokens=12,
                                       temperature=0)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    assert r.usage.completion_tokens == len(want.token_ids)


def test_chat_stream_with_usage(client, tiny):
    whole = client.chat.completions.create(model=tiny.name, messages=CHAT, temperature=0,
                                           max_completion_tokens=10)
    chunks = list(client.chat.completions.create(
        model=tiny.name, messages=CHAT, temperature=0, max_completion_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_sse_wire_format_ends_with_done(server, tiny):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json={
            "prompt": "Hello", "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_completions_list_prompt_n2_seeded(client, tiny):
    prompts = ["The sea is", "Mountains are"]
    r = client.completions.create(model=tiny.name, prompt=prompts, n=2, max_tokens=8, seed=7,
                                  temperature=1.0)
    want = tiny.generate(prompts, SamplingParams(n=2, max_tokens=8, seed=7))
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [o.text for res in want for o in res.outputs]
    again = client.completions.create(model=tiny.name, prompt=prompts, n=2, max_tokens=8, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    assert r.choices[0].text != r.choices[1].text  # n different draws


def test_seeded_chat_matches_pyllm_run(client, tiny_path, tiny):
    from click.testing import CliRunner

    from pyllm.cli.main import cli
    from pyllm.cli.options import SAMPLING_DEFAULTS

    result = CliRunner().invoke(cli, ["run", str(tiny_path), "Tell me about the sea.", "--chat",
                                      "--json", "--seed", "11", "--max-tokens", "10"])
    assert result.exit_code == 0, result.output
    want = json.loads(result.output)["text"]
    extras = {k: v for k, v in SAMPLING_DEFAULTS.items() if k not in ("temperature", "top_p",
                                                                      "max_tokens")}
    r = client.chat.completions.create(
        model=tiny.name, messages=CHAT, seed=11, max_tokens=10,
        temperature=SAMPLING_DEFAULTS["temperature"], top_p=SAMPLING_DEFAULTS["top_p"],
        extra_body=extras)
    assert r.choices[0].message.content == want


def test_stop_strings(client, tiny):
    full = tiny.generate("Once upon", SamplingParams.greedy(max_tokens=16))[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    r = client.completions.create(model=tiny.name, prompt="Once upon", max_tokens=16,
                                  temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_logprobs(client, tiny):
    r = client.chat.completions.create(model=tiny.name, messages=CHAT, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen one is the top
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-5)
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_completion_echo_logprobs_match_score(client, tiny):
    r = client.completions.create(model=tiny.name, prompt="The sea is blue", max_tokens=0,
                                  echo=True, logprobs=1)
    scored = tiny.score("The sea is blue", top_n=1)[0]
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "The sea is blue"
    assert lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([s.logprob for s in scored[1:]], abs=1e-5)


def test_embeddings(client, tiny):
    r = client.embeddings.create(model=tiny.name, input=["a sea", "a mountain"])
    want = tiny.embed(["a sea", "a mountain"])
    for got, vector in zip(r.data, want):
        assert got.embedding == pytest.approx(vector, abs=1e-6)
    assert len(want[0]) == tiny.config.n_embd
    assert math.isclose(sum(v * v for v in want[0]), 1.0, rel_tol=1e-5)


def test_pyllm_embed_command(tiny_path, tiny):
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    result = CliRunner().invoke(cli, ["embed", "-m", str(tiny_path), "a sea", "a mountain"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [x["text"] for x in lines] == ["a sea", "a mountain"]
    for line, want in zip(lines, tiny.embed(["a sea", "a mountain"])):
        assert line["embedding"] == pytest.approx(want, abs=1e-6)


def test_task_route(server, tiny):
    from pyllm import tasks

    labels = ["sport", "weather"]
    want = tasks.get("classify").run(tiny, [{"text": "It rained all day."}], labels=labels)[0]
    r = post(server, "/v1/tasks/classify", {"text": "It rained all day.", "id": "r1",
                                            "options": {"labels": labels}})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "r1", **json.loads(json.dumps(want))}
    missing = post(server, "/v1/tasks/classify", {"txt": "x", "options": {"labels": labels}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "text"
    assert post(server, "/v1/tasks/nope", {"text": "x"}).status_code == 404


def test_metrics(server, client, tiny):
    client.completions.create(model=tiny.name, prompt="Hi", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["pyllm_prompt_tokens_total"] > 0
    assert values["pyllm_generated_tokens_total"] >= 3
    assert values["pyllm_time_to_first_token_seconds_count"] >= 1
    assert values["pyllm_inter_token_latency_seconds_count"] >= 2
    assert values['pyllm_requests_total{route="/v1/completions",status="200"}'] >= 1
    assert "pyllm_kv_blocks_in_use" in values and "pyllm_waiting_sequences" in values


# ---------------------------------------------------------------------- concurrency


def test_sixteen_concurrent_streams(server, tiny):
    prompts = [f"Story number {i}:" for i in range(16)]
    want = [r.text for r in tiny.generate(prompts, SamplingParams.greedy(max_tokens=12))]

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)

        async def one(p):
            stream = await client.completions.create(model=tiny.name, prompt=p, max_tokens=12,
                                                     temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.gather(*[one(p) for p in prompts])
        finally:
            await client.close()

    assert asyncio.run(main()) == want
    assert wait_idle(tiny)


def test_disconnect_mid_stream_frees_blocks(server, tiny):
    assert wait_idle(tiny)
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json={
            "prompt": "Hello " * 40, "max_tokens": 400, "stream": True,
            "ignore_eos": True}) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert not idle(tiny)
    assert wait_idle(tiny)


def test_full_queue_answers_429(tiny_path):
    llm = pyllm.load(tiny_path, progress=False)
    with serving(llm, limits=Limits(max_waiting=1)) as s:
        first: list[httpx.Response] = []
        with llm.engine.exclusive():  # the engine stands still: the first request must wait
            t = threading.Thread(target=lambda: first.append(post(s, "/v1/completions", {
                "prompt": "Hi", "max_tokens": 2})))
            t.start()
            deadline = time.monotonic() + 5
            while llm.engine.num_waiting() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = post(s, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        t.join(10)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert first[0].status_code == 200


# ---------------------------------------------------------------------- errors


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return body["error"]


def test_error_shapes(server, tiny):
    chat = {"messages": CHAT, "max_tokens": 4}
    assert "not valid JSON" in _error(post(server, "/v1/chat/completions", b"{bad"), 400)["message"]
    assert _error(post(server, "/v1/chat/completions", {**chat, "model": "gpt-9"}), 404)[
        "code"] == "model_not_found"
    e = _error(post(server, "/v1/chat/completions", {**chat, "temperature": -1}), 400)
    assert e["param"] == "temperature" and "-1" in e["message"]
    e = _error(post(server, "/v1/chat/completions", {**chat, "n": 1000}), 400)
    assert e["param"] == "n"
    e = _error(post(server, "/v1/chat/completions", {**chat, "top_kk": 3}), 400)
    assert "top_k" in e["message"]
    e = _error(post(server, "/v1/chat/completions", {**chat, "top_k": -5}), 400)
    assert e["param"] == "top_k"
    e = _error(post(server, "/v1/completions", {"prompt": "a", "suffix": "b"}), 400)
    assert e["param"] == "suffix"
    e = _error(post(server, "/v1/chat/completions", {"messages": "hi"}), 422)
    assert e["param"] == "messages"
    long_prompt = "word " * 600
    e = _error(post(server, "/v1/completions", {"prompt": long_prompt}), 400)
    n = len(tiny.tokenizer.encode(long_prompt))
    assert str(n) in e["message"] and str(tiny.context_length) in e["message"]
    e = _error(post(server, "/v1/completions", {"prompt": "a", "max_tokens": 10_000}), 400)
    assert e["param"] == "max_tokens" and "10000" in e["message"]
    _error(post(server, "/v1/completions", {"prompt": "x" * (70 << 10)}), 413)
    _error(httpx.get(server.url + "/v1/nothing"), 404)


def test_openai_client_raises_the_errors(client, tiny):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        client.chat.completions.create(model=tiny.name, messages=CHAT, presence_penalty=5)


def test_api_key(tiny):
    with serving(tiny, api_key=KEY) as s:
        assert s.client(KEY).models.list().data
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        e = _error(httpx.post(s.url + "/v1/completions", json={"prompt": "a"}), 401)
        assert e["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/health").status_code == 200


def test_cors_only_when_asked(tiny, server):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    with serving(tiny, cors_origins=["https://app.example"]) as s:
        r = httpx.options(s.url + "/v1/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"


# ---------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_is_a_one_line_error(tiny_path, capsys):
    from pyllm.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "-m", str(tiny_path), "--port", str(port)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_sigterm_drains_and_exits_0(tiny_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "pyllm.cli.main", "serve", "-m",
                             str(tiny_path), "--port", str(port), "--grace", "20",
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYLLM_API_KEY": KEY})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/v1/models").status_code == 401  # PYLLM_API_KEY is the key
        lines = []
        with httpx.stream("POST", url + "/v1/completions", headers=auth, timeout=30, json={
                "prompt": "Hi", "max_tokens": 150, "stream": True, "ignore_eos": True}) as r:
            it = r.iter_lines()
            lines.append(next(it))
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no new connections while draining
                httpx.get(url + "/health", timeout=2)
            lines += [line for line in it if line]
        assert lines[-1] == "data: [DONE]"
        final = json.loads(lines[-2][6:])
        assert final["choices"][0]["finish_reason"] == "length"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- the default model


def test_default_model(smollm2_path):
    llm = pyllm.load(smollm2_path, progress=False)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    want = llm.chat(messages, SamplingParams.greedy(max_tokens=16))
    with serving(llm) as s:
        c = s.client()
        r = c.chat.completions.create(model=llm.name, messages=messages, max_tokens=16,
                                      temperature=0)
        assert r.choices[0].message.content == want.text and "Paris" in want.text
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=llm.name, messages=messages, max_tokens=16, temperature=0, stream=True))
        assert streamed == want.text


# ---------------------------------------------------------------------- the REPL as a client


def test_repl_http_backend(server, tiny):
    from pyllm.repl.http_backend import HTTPBackend

    backend = HTTPBackend(server.url)
    assert backend.model_name == tiny.name and backend.context_length == tiny.context_length
    messages = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert backend.count_tokens(messages) == len(tiny.encode_prompt(messages))
    assert backend.tokenize("hi there")[0] == tiny.tokenizer.encode("hi there", add_bos=False)
    params = SamplingParams(seed=3, max_tokens=10, temperature=0.8, top_k=40, min_p=0.05)
    reply = "".join(backend.stream_reply(messages, params))
    assert reply == tiny.chat(messages, params).text
    assert backend.last_stats.tokens == 10 and backend.last_stats.finish_reason == "length"
    stream = backend.stream_reply(messages, SamplingParams(max_tokens=400, ignore_eos=True))
    next(stream)
    stream.close()  # Ctrl-C in the REPL: the server aborts the request
    assert wait_idle(tiny)


def test_pyllm_chat_url(server, tiny):
    from click.testing import CliRunner

    from pyllm.cli.main import cli
    from pyllm.cli.options import SAMPLING_DEFAULTS

    params = SamplingParams(**{**SAMPLING_DEFAULTS, "temperature": 0.0, "max_tokens": 6})
    want = tiny.chat(CHAT, params).text  # the chat's defaults, made greedy
    result = CliRunner().invoke(cli, ["chat", "--url", server.url, "--temperature", "0",
                                      "--max-tokens", "6", "--no-history"],
                                input=CHAT[0]["content"] + "\n")
    assert result.exit_code == 0, result.output
    assert want.strip() in result.output


def test_served_requests_are_logged(tiny, tmp_path, monkeypatch):
    """With log_requests (pyllm serve's default), each completion is a row in the conversation
    log: chat streamed and not, and text completions, with the reply the client received."""
    from pyllm import logs

    monkeypatch.setenv("PYLLM_HOME", str(tmp_path))
    monkeypatch.delenv("PYLLM_LOG", raising=False)
    with serving(tiny, log_requests=True) as s:
        c = s.client()
        chat = c.chat.completions.create(
            model=tiny.name, messages=[{"role": "user", "content": "log me"}], max_tokens=4,
            temperature=0)
        streamed = "".join(
            (ch.choices[0].delta.content or "") for ch in c.chat.completions.create(
                model=tiny.name, messages=[{"role": "user", "content": "stream me"}], max_tokens=4,
                temperature=0, stream=True) if ch.choices)
        text = c.completions.create(model=tiny.name, prompt="complete me", max_tokens=3, n=2,
                                    temperature=0.5, seed=1)
    rows = logs.recent(None, path=tmp_path / logs.FILENAME)
    by_prompt: dict[str, list] = {}
    for r in rows:
        by_prompt.setdefault(r.prompt, []).append(r)
    assert [r.reply for r in by_prompt["log me"]] == [chat.choices[0].message.content]
    assert by_prompt["log me"][0].messages[-1] == {"role": "user", "content": "log me"}
    assert [r.reply for r in by_prompt["stream me"]] == [streamed]
    assert sorted(r.reply for r in by_prompt["complete me"]) == sorted(
        ch.text for ch in text.choices)
    assert by_prompt["complete me"][0].settings.get("n") == 2


def test_requests_are_not_logged_unless_asked(tiny, tmp_path, monkeypatch):
    from pyllm import logs

    monkeypatch.setenv("PYLLM_HOME", str(tmp_path))
    with serving(tiny) as s:
        s.client().completions.create(model=tiny.name, prompt="quiet", max_tokens=2)
    assert logs.recent(None, path=tmp_path / logs.FILENAME) == []
