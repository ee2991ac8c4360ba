"""`pyllm logs`: the conversations `run` and `chat` logged in $PYLLM_HOME/logs.db
(pyllm/logs.py)."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command("logs")
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="How many of the latest replies to show (0: all).",
)
@click.option("-q", "--query", default=None, help="Only replies whose prompt or text contain this.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the logged replies.")
@click.option("--path", "show_path", is_flag=True, help="Print the database's path and exit.")
def logs(count: int, query: str | None, as_json: bool, show_path: bool) -> None:
    """Show the latest logged replies, oldest first: model, time, tokens, prompt and reply.

    Every `pyllm run` and `pyllm chat` turn is logged unless --no-log is given or PYLLM_LOG=0 is
    set; `pyllm run -c` and `pyllm chat -c` continue the last conversation.
    """
    from pyllm import logs as store

    if show_path:
        click.echo(store.db_path())
        return
    found = store.recent(count or None, query)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in found], indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo(
            "no logged replies"
            + (f" containing {query!r}" if query else "")
            + f" in {store.db_path()}",
            err=True,
        )
        return
    for r in found:
        tokens = f"{r.prompt_tokens or 0} + {r.completion_tokens or 0} tokens"
        timing = f", {r.seconds:.1f} s" if r.seconds is not None else ""
        click.echo(
            f"# {r.created}  {r.model}  conversation {r.conversation_id}  ({tokens}{timing})"
        )
        if r.settings:
            click.echo("settings: " + " ".join(f"{k}={v}" for k, v in r.settings.items()))
        if r.system:
            click.echo(f"\n## System\n\n{r.system}")
        click.echo(f"\n## Prompt\n\n{r.prompt}\n\n## Reply\n\n{r.reply}\n")
