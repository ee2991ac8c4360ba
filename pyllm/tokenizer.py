"""The front door to tokenizers: pick the registered factory that fits a model and build it.

``load_tokenizer(metadata)`` for a GGUF model (the kind is ``tokenizer.ggml.model``);
``load_tokenizer({}, path)`` for a ``tokenizer.json`` or a SentencePiece ``.model`` file (the kind
is chosen by the file name); ``kind=`` forces one. Factories come from the ``register_tokenizers``
plugin hook, so a plugin can add a kind or serve a model the built-ins do not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyllm.errors import ModelFormatError

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Tokenizer


def tokenizer_kind(metadata: Mapping[str, Any], path: Path | None = None) -> str:
    """The registry name of the tokenizer a model needs."""
    if path is not None:
        p = Path(path)
        if p.suffix == ".json" or (p.is_dir() and (p / "tokenizer.json").is_file()):
            return "hf-json"
        if p.suffix == ".model" or (p.is_dir() and (p / "tokenizer.model").is_file()):
            return "sentencepiece"
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise ModelFormatError("tokenizer.ggml.model: missing (cannot tell which tokenizer to use)")
    return str(model)


def load_tokenizer(
    metadata: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    *,
    kind: str | None = None,
    origin: str | Path | None = None,
) -> Tokenizer:
    """Build the tokenizer for a model.

    :param metadata: GGUF metadata (``load_gguf(path).metadata``), or {} / None.
    :param path: a tokenizer file or a folder holding tokenizer.json / tokenizer.model.
    :param kind: force a registered tokenizer kind instead of guessing it.
    :param origin: the model file, named in error messages.
    :raises pyllm.ModelFormatError: unknown kind, missing or corrupt tokenizer data (the message
        names the file and the key at fault).
    """
    from pyllm import plugins

    metadata = {} if metadata is None else metadata
    p = None if path is None else Path(path)
    if p is not None and p.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (p / name).is_file():
                p = p / name
                break
    where = f"{origin}: " if origin is not None else ""
    try:
        name = kind or tokenizer_kind(metadata, p)
        factories = plugins.tokenizers()
        if name not in factories:
            known = ", ".join(sorted(factories)) or "none (are plugins disabled by PYLLM_PLUGINS?)"
            raise ModelFormatError(f"no tokenizer plugin for {name!r} (registered: {known})")
        return factories[name](metadata, p)
    except ModelFormatError as e:
        if where and not str(e).startswith(str(origin)):
            raise ModelFormatError(f"{where}{e}") from e.__cause__
        raise


def load_tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """Read a GGUF file's metadata and build its tokenizer."""
    from pyllm.weights.gguf import load_gguf

    gguf = load_gguf(path)
    return load_tokenizer(gguf.metadata, origin=path)
