"""`pyllm plugins`: list installed plugins, their distribution, what they registered and what
pyllm refused."""

from __future__ import annotations

import json

import click


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins and what they registered.

    Each plugin is an entry point in the `pyllm` group; the built-ins come with pyllm itself.
    A plugin that failed to load or raised in a hook is listed with its error, and each
    registration pyllm refused (a taken name, an object that is not what the hook asks for)
    with the reason.
    Set PYLLM_PLUGINS=name1,name2 to choose which plugins load (`builtin` = pyllm's own).
    """
    from pyllm.plugins import plugin_report

    report = plugin_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("no plugins loaded (is PYLLM_PLUGINS empty?)")
        return
    for row in report:
        where = row["distribution"] or row["module"] or "?"
        version = f" {row['version']}" if row["version"] else ""
        tag = " (built-in)" if row["builtin"] else ""
        click.echo(f"{row['name']}: {where}{version}{tag}")
        for kind, names in sorted(row["registered"].items()):
            click.echo(f"  {kind}: {', '.join(names)}")
        for refusal in row["refused"]:
            click.echo(f"  refused {refusal['kind']}: {refusal['name']} ({refusal['reason']})")
        if row["error"]:
            click.echo(f"  error: {row['error']}")
