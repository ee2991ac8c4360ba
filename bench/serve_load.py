"""Load test of `pyllm serve` beside llama-cpp-python's server on the same GGUF.

    python bench/serve_load.py                                  # default model, 1/4/16/64 clients
    python bench/serve_load.py --clients 1,16 --pyllm-args "--int8 --kv-dtype float16"
    python bench/serve_load.py --servers pyllm --json /tmp/serve.json

For each server (started here as a subprocess on a free port, then stopped) and each number of
concurrent clients C, C streaming chat requests (each its own user message, greedy, --max-tokens
new tokens) run at once, `--rounds` times back to back. Reported per level:

- tokens/s: generated tokens of all clients over the level's wall time (a token = a streamed
  chunk with text; pyllm is asked to ignore EOS so every reply has --max-tokens tokens, the peer
  may stop earlier: its rate counts what it sent);
- TTFT p50/p99: request sent -> first text chunk;
- ITL p50/p99: the gaps between consecutive text chunks of one reply;
- peak RSS of the server process (VmHWM, over its whole life: model load included).

The peer is `python -m llama_cpp.server --model F.gguf --n_threads T --interrupt_requests False`
(it answers one request at a time; by default a new request would cut the one streaming); it is
skipped, with the reason printed, when llama_cpp is not installed. `--baseline`
also times `LLM.stream` in this process (what `pyllm run` does) for the 1-client comparison.
The machine this runs on matters more than anything: quote ratios from one run, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

TOPICS = ["the sea", "a mountain village", "a lost key", "the first snow", "a robot gardener",
          "an old library", "a night train", "a lighthouse keeper", "a desert city", "a comet"]


@dataclass
class Level:
    server: str
    clients: int
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Server:
    def __init__(self, name: str, argv: list[str], port: int, extra_body: dict) -> None:
        self.name, self.port, self.extra_body = name, port, extra_body
        self.url = f"http://127.0.0.1:{port}"
        # the log goes to a file: a pipe nobody reads fills up and stalls a chatty server
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.model = None

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read()[-2000:]}")
            try:
                r = httpx.get(self.url + "/v1/models", timeout=2)
                if r.status_code == 200:
                    self.model = r.json()["data"][0]["id"]
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not start in {timeout} s")

    def stop(self) -> float:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return rss


async def one_request(client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int,
                      level: Level) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, **server.extra_body}
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                level.errors += 1
                return
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if not choices or not (choices[0].get("delta") or {}).get("content"):
                    continue
                now = time.perf_counter()
                if last is None:
                    level.ttft.append(now - start)
                else:
                    level.itl.append(now - last)
                last = now
                level.tokens += 1
        level.requests += 1
    except httpx.HTTPError:
        level.errors += 1


async def run_level(server: Server, clients: int, rounds: int, max_tokens: int) -> Level:
    level = Level(server.name, clients)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        async def client_loop(i: int) -> None:
            for r in range(rounds):
                topic = TOPICS[(i + r) % len(TOPICS)]
                await one_request(client, server, f"Client {i}, round {r}: write a long story "
                                                  f"about {topic}.", max_tokens, level)

        start = time.perf_counter()
        await asyncio.gather(*[client_loop(i) for i in range(clients)])
        level.seconds = time.perf_counter() - start
    return level


def baseline_tokens_per_s(model: Path, max_tokens: int, pyllm_args: list[str]) -> float:
    """LLM.stream in this process, greedy, EOS ignored: what `pyllm run` measures."""
    import pyllm

    int8 = "--int8" in pyllm_args
    kv = pyllm_args[pyllm_args.index("--kv-dtype") + 1] if "--kv-dtype" in pyllm_args else "float32"
    llm = pyllm.load(model, progress=False, int8_activations=int8, kv_dtype=kv)
    params = pyllm.SamplingParams.greedy(max_tokens=max_tokens, ignore_eos=True)
    messages = [{"role": "user", "content": "Write a long story about the sea."}]
    list(llm.stream(messages, params.replace(max_tokens=4)))  # warm up
    start = time.perf_counter()
    n = sum(1 for delta in llm.stream(messages, params) if delta)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF file [default: the default model]")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="requests per client, back to back")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="the peer's --n_threads (pyllm uses torch's threads: the same cores)")
    ap.add_argument("--servers", default="pyllm,llama-cpp")
    ap.add_argument("--pyllm-args", default="", help='extra `pyllm serve` flags, e.g. "--int8"')
    ap.add_argument("--baseline", action="store_true", help="also time LLM.stream in-process")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.model is None:
        from pyllm.weights.pull import ensure_default_model

        args.model = ensure_default_model(progress=False)
    levels = [int(c) for c in args.clients.split(",")]
    pyllm_args = shlex.split(args.pyllm_args)
    results: list[dict] = []
    rss: dict[str, float] = {}
    for name in args.servers.split(","):
        port = free_port()
        if name == "pyllm":
            argv = [sys.executable, "-m", "pyllm.cli.main", "serve", "-m", str(args.model),
                    "--port", str(port), "--log-level", "warning", *pyllm_args]
            server = Server(name, argv, port, {"ignore_eos": True})
        elif name == "llama-cpp":
            if importlib.util.find_spec("llama_cpp") is None:
                print("llama-cpp: skipped: llama_cpp (llama-cpp-python) is not installed "
                      "(pip install 'llama-cpp-python[server]')")
                continue
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(args.model),
                    "--n_threads", str(args.threads), "--port", str(port), "--n_ctx", "4096",
                    # by default a new request interrupts the one streaming: queue them instead
                    "--interrupt_requests", "False"]
            server = Server(name, argv, port, {})
        else:
            raise SystemExit(f"unknown server {name!r} (pyllm, llama-cpp)")
        try:
            server.wait_ready()
            asyncio.run(run_level(server, 1, 1, 4))  # warm up
            for clients in levels:
                level = asyncio.run(run_level(server, clients, args.rounds, args.max_tokens))
                results.append({**asdict(level), "tokens_per_s": level.tokens_per_s})
                print(f"{name:10s} {clients:3d} clients: {level.tokens_per_s:7.1f} tok/s  "
                      f"TTFT p50 {pct(level.ttft, 50) * 1e3:7.0f} ms p99 "
                      f"{pct(level.ttft, 99) * 1e3:7.0f} ms  ITL p50 {pct(level.itl, 50) * 1e3:6.1f}"
                      f" ms p99 {pct(level.itl, 99) * 1e3:6.1f} ms  ({level.requests} requests, "
                      f"{level.tokens} tokens, {level.errors} errors)", flush=True)
        finally:
            rss[name] = server.stop()
        print(f"{name:10s} peak server RSS {rss[name]:.0f} MB", flush=True)
    by = {(r["server"], r["clients"]): r for r in results}
    for clients in levels:
        a, b = by.get(("pyllm", clients)), by.get(("llama-cpp", clients))
        if a and b and b["tokens_per_s"]:
            print(f"{clients:3d} clients: pyllm / llama-cpp tokens/s = "
                  f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x, TTFT p50 ratio "
                  f"{pct(a['ttft'], 50) / pct(b['ttft'], 50):.2f}")
    base = None
    if args.baseline:
        base = baseline_tokens_per_s(args.model, args.max_tokens, pyllm_args)
        one = by.get(("pyllm", 1))
        ratio = f" (server at 1 client: {one['tokens_per_s'] / base:.2f}x of it)" if one else ""
        print(f"in-process LLM.stream: {base:.1f} tok/s{ratio}")
    if args.json:
        summary = [{k: v for k, v in r.items() if k not in ("ttft", "itl")} |
                   {"ttft_p50": pct(r["ttft"], 50), "ttft_p99": pct(r["ttft"], 99),
                    "itl_p50": pct(r["itl"], 50), "itl_p99": pct(r["itl"], 99)} for r in results]
        args.json.write_text(json.dumps({"levels": summary, "peak_rss_mb": rss,
                                         "baseline_tokens_per_s": base}, indent=1))


if __name__ == "__main__":
    main()
