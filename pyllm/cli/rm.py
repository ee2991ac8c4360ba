"""`pyllm rm MODEL`: remove a model from the cache ($PYLLM_HOME/models)."""

from __future__ import annotations

import click


@click.command(name="rm")
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove MODELS from the model cache, by the names `pyllm models` lists.

    An hf.co name without a quant means its Q4_K_M file, as in `pyllm pull`. Files outside
    the cache are never touched.
    """
    from pyllm.weights.pull import find_cached, remove_cached

    entries = [find_cached(name) for name in models]  # every name checked before removing any
    for entry in entries:
        remove_cached(entry)
        click.echo(f"removed {entry['name']} ({entry['size'] / 1e6:.1f} MB): {entry['path']}")
