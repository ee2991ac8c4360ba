"""Prometheus metrics of one server (its own registry, so several servers in one process — tests —
never share counters). docs/serving.md says what each one means."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-exported)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.engine.frontend import EngineFrontend

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    def __init__(self, frontend: EngineFrontend) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "pyllm_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pyllm_prompt_tokens", "Prompt tokens submitted for generation", registry=r
        )
        self.generated_tokens = Counter(
            "pyllm_generated_tokens",
            "Tokens generated (every completion of every request)",
            registry=r,
        )
        self.ttft = Histogram(
            "pyllm_time_to_first_token_seconds",
            "From a request's submission to its first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pyllm_inter_token_latency_seconds",
            "Time between two consecutive tokens of one completion",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        Gauge("pyllm_running_sequences", "Sequences in the running batch", registry=r).set_function(
            lambda: frontend.num_running()
        )
        Gauge(
            "pyllm_waiting_sequences", "Sequences waiting for a place in the batch", registry=r
        ).set_function(lambda: frontend.num_waiting())
        Gauge(
            "pyllm_kv_blocks_in_use", "KV-cache blocks held by sequences", registry=r
        ).set_function(lambda: frontend.blocks_in_use())
        Gauge("pyllm_kv_blocks_total", "KV-cache blocks in all", registry=r).set_function(
            lambda: frontend.engine.num_blocks
        )

    # the Generation observer interface (pyllm/server/bridge.py)
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.generated_tokens.inc()

    def tokens(self, n: int, seconds: float) -> None:
        self.generated_tokens.inc(n)
        for _ in range(n):
            self.itl.observe(seconds / n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
