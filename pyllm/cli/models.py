"""`pyllm models`: list the models in the cache."""

from __future__ import annotations

import json

import click


@click.group(name="models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models in the cache ($PYLLM_HOME/models) with size, type and path.

    Any name shown can be given to other commands. `pyllm pull` adds models;
    `pyllm models default NAME` sets the model used when a command names none.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pyllm.weights.pull import cached_models, models_dir

    rows = cached_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models in {models_dir()} (run `pyllm pull` for the default, smollm2)")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['type']:<9}  {_size(r['size']):>9}  {r['path']}")


def _add_default_command() -> None:
    from pyllm.cli.aliases import default_model

    models.add_command(default_model)


_add_default_command()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover
