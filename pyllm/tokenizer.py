"""The front door to tokenizers: pick the registered factory that fits a model and build it.

``load_tokenizer(metadata)`` for a GGUF model (the kind is ``tokenizer.ggml.model``);
``load_tokenizer({}, path)`` for a ``tokenizer.json`` or a SentencePiece ``.model`` file (the kind
is chosen by the file name); ``kind=`` forces one. Factories come from the ``register_tokenizers``
plugin hook, so a plugin can add a kind or serve a model the built-ins do not know.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping, Sequence
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


# ------------------------------------------------------------------ text a vocabulary loses

log = logging.getLogger("pyllm.tokenizer")


class _Request:
    """What one request's encode calls lost: each character once, with what became of it."""

    def __init__(self, warn: bool) -> None:
        self.warn = warn
        self.lost: dict[str, str] = {}


_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "pyllm_tokenizer_request", default=None
)
SHOWN_CHARACTERS = 5


@contextlib.contextmanager
def request_scope(*, warn: bool = True) -> Iterator[None]:
    """Everything encoded inside is one request: text the vocabulary cannot represent is
    reported once for all of it, when the scope ends (a chat prompt is encoded in several
    calls). ``warn=False`` reports nothing (for a caller that shows the loss itself). A scope
    opened inside another is part of it: the outermost one reports, or keeps quiet (so a caller
    that encodes the same text several times for one request, such as a REPL turn that counts
    tokens and then generates, tells the user once)."""
    if _request.get() is not None:
        yield
        return
    req = _Request(warn)
    token = _request.set(req)
    try:
        yield
    finally:
        _request.reset(token)
    if req.warn and req.lost:
        chars = list(req.lost)
        fates = sorted(set(req.lost.values()))
        shown = ", ".join(_codepoint(ch) for ch in chars[:SHOWN_CHARACTERS])
        more = f" and {len(chars) - SHOWN_CHARACTERS} more" if len(chars) > SHOWN_CHARACTERS else ""
        log.warning(
            "the model's vocabulary cannot represent %s of the input (%s%s), %s",
            _characters(len(chars)),
            shown,
            more,
            "; ".join(fates),
        )


def report_unrepresentable(lost: Sequence[tuple[int, str]], fate: str) -> None:
    """Warn that characters of the input cannot be represented (tokenizers call this).

    A logging warning on ``pyllm.tokenizer``, not a Python warning: the same text in the next
    request deserves the same notice, while the warnings module shows a message once per
    process; and the command line prints pyllm's log warnings as ``warning: ...`` lines.
    Inside a :func:`request_scope` the scope reports once for the request; outside one, each
    encode call reports what it lost.
    """
    if not lost:
        return
    req = _request.get()
    if req is not None:
        for _, ch in lost:
            req.lost.setdefault(ch, fate)
        return
    log.warning("%s", describe_unrepresentable(lost, fate))


def describe_unrepresentable(lost: Sequence[tuple[int, str]], fate: str) -> str:
    """One line naming the characters a vocabulary loses and where they are."""
    shown = ", ".join(f"{_codepoint(ch)} at position {pos}" for pos, ch in lost[:SHOWN_CHARACTERS])
    more = f" and {len(lost) - SHOWN_CHARACTERS} more" if len(lost) > SHOWN_CHARACTERS else ""
    return (
        f"the model's vocabulary cannot represent {_characters(len(lost))} of the input, "
        f"{fate}: {shown}{more}"
    )


def _characters(n: int) -> str:
    return f"{n} character{'s' if n != 1 else ''}"


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"
