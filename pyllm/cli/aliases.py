"""`pyllm aliases` (short names for models) and `pyllm models default` (the model a command uses
when none is named), both kept in $PYLLM_HOME/settings.json (pyllm/settings.py)."""

from __future__ import annotations

import json

import click


@click.group("aliases", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the aliases as a JSON object.")
@click.pass_context
def aliases(ctx: click.Context, as_json: bool) -> None:
    """Short names for models: `pyllm aliases set tiny ~/models/tiny.gguf`, then
    `pyllm run tiny "Hi"`. With no subcommand, lists them."""
    if ctx.invoked_subcommand is None:
        _list(as_json)


@aliases.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the aliases as a JSON object.")
def list_aliases(as_json: bool) -> None:
    """List the aliases: NAME: MODEL."""
    _list(as_json)


def _list(as_json: bool) -> None:
    from pyllm import settings

    table = settings.aliases()
    if as_json:
        click.echo(json.dumps(table, indent=2, ensure_ascii=False))
    elif not table:
        click.echo("no aliases (add one with: pyllm aliases set NAME MODEL)")
    else:
        width = max(len(n) for n in table)
        for name, model in table.items():
            click.echo(f"{name + ':':<{width + 1}} {model}")


@aliases.command("set")
@click.argument("name")
@click.argument("model")
def set_alias(name: str, model: str) -> None:
    """Make NAME stand for MODEL (a model name, .gguf path, Hugging Face folder or Hub id)."""
    from pathlib import Path

    from pyllm import settings

    local = Path(model).expanduser()
    if local.exists():
        model = str(local.resolve())  # a relative path would change meaning with the directory
    settings.set_alias(name, model)
    click.echo(f"{name} -> {model}", err=True)


@aliases.command("remove")
@click.argument("name")
def remove_alias(name: str) -> None:
    """Forget the alias NAME."""
    from pyllm import settings

    if not settings.remove_alias(name):
        known = ", ".join(settings.aliases()) or "none"
        raise click.UsageError(f"no alias named {name!r} (aliases: {known})")
    click.echo(f"removed {name}", err=True)


@click.command("default")
@click.argument("model", required=False)
@click.option("--clear", is_flag=True, help="Forget the setting (back to smollm2).")
def default_model(model: str | None, clear: bool) -> None:
    """Show the default model, or set it to MODEL (used when a command names none)."""
    from pyllm import settings
    from pyllm.weights.pull import DEFAULT_MODEL

    if clear:
        if model is not None:
            raise click.UsageError("give MODEL or --clear, not both")
        settings.set_default_model(None)
        click.echo(f"default model: {DEFAULT_MODEL.name} (pyllm's own)", err=True)
        return
    if model is None:
        click.echo(settings.default_model() or DEFAULT_MODEL.name)
        return
    settings.set_default_model(model)
    click.echo(f"default model: {model}", err=True)
