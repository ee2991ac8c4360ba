"""`pyllm models`: list the models in the cache."""

from __future__ import annotations

import json

import click


@click.group(name="models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--verify",
    is_flag=True,
    help="Hash every file against its recorded sha256 (exit status 1 if one is damaged).",
)
@click.pass_context
def models(ctx: click.Context, as_json: bool, verify: bool) -> None:
    """List the models in the cache ($PYLLM_HOME/models) with size, type and path.

    The status column: verified (checked by its sidecar), unchecked (changed since its last
    check: hashed when next used), no hash (nothing to check it against); with --verify, ok or
    damaged. Any name shown can be given to other commands. `pyllm pull` adds models;
    `pyllm models default NAME` sets the model used when a command names none.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pyllm.weights.pull import cached_models, models_dir

    rows = cached_models(verify=verify)
    damaged = [r for r in rows if r["status"] == "damaged"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"no models in {models_dir()} (run `pyllm pull` for the default, smollm2)")
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            click.echo(
                f"{r['name']:<{width}}  {r['type']:<9}  {_size(r['size']):>9}  "
                f"{r['status']:<9}  {r['path']}"
            )
    for r in damaged:
        click.echo(f"error: {r['name']}: {r['hint']}", err=True)
    if damaged:
        ctx.exit(1)


def _add_default_command() -> None:
    from pyllm.cli.aliases import default_model

    models.add_command(default_model)


_add_default_command()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover
