"""pyllm-example: a third-party pyllm plugin in one small module.

Everything here is cheap to import: `click` is already loaded by the CLI, and the sampler step
works on the logits tensor it is given without importing torch itself.
"""

from __future__ import annotations

from typing import Any

import click

from pyllm.hookspecs import (
    RegisterCommand,
    RegisterReplCommand,
    RegisterSampler,
    RegisterTask,
    hookimpl,
)

__version__ = "0.1.0"


class TopA:
    """Top-a sampling: keep tokens whose probability is at least ``a * p_max**2``.

    With a confident model (large ``p_max``) few alternatives survive; with a flat distribution
    many do. ``a=0`` keeps everything. The threshold adapts per row.
    """

    name = "top_a"

    def __init__(self, a: float = 0.2) -> None:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"top_a: a must be in [0, 1], got {a}")
        self.a = a

    def __call__(self, logits: Any, context: Any) -> Any:
        probs = logits.softmax(dim=-1)  # (B, V)
        p_max = probs.max(dim=-1, keepdim=True).values  # (B, 1)
        drop = probs < self.a * p_max * p_max  # (B, V)
        return logits.masked_fill(drop, float("-inf"))


@click.command(name="example-hello")
@click.argument("name", default="world")
def hello(name: str) -> None:
    """Say hello (a command added by the pyllm-example plugin)."""
    click.echo(f"Hello, {name}! (from pyllm-example {__version__})")


def shout(session: Any, arg: str) -> None:
    """REPL handler for /shout: echo the argument in capitals."""
    session.echo(arg.upper() if arg else "SHOUT WHAT?")


class Sentiment:
    """A task built on pyllm's public API: positive or negative, through the built-in
    ``classify`` task (label scoring with calibration). ``pyllm.tasks.get("sentiment").run(llm,
    [{"text": "I loved it"}])`` -> ``[{"sentiment": "positive", "positive": 0.93}]``."""

    name = "sentiment"
    description = "Positive or negative? (pyllm-example, built on the classify task)"
    input_fields = ("text",)

    def run(self, llm: Any, records: Any, **options: Any) -> list[dict[str, Any]]:
        from pyllm import tasks

        results = tasks.run(
            llm,
            "classify",
            [r["text"] for r in records],
            labels=["positive", "negative"],
            instruction="Say whether the text is positive or negative.",
            **options,
        )
        return [{"sentiment": r["label"], "positive": r["scores"]["positive"]} for r in results]


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register("sentiment", Sentiment())


@hookimpl
def register_samplers(register: RegisterSampler) -> None:
    register("top_a", TopA())


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register(hello)


@hookimpl
def register_repl_commands(register: RegisterReplCommand) -> None:
    register("shout", shout, "Echo TEXT in capitals (pyllm-example).", aliases=("yell",))
