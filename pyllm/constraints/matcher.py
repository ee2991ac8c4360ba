"""Compiling a request's constraint and following one sequence through it.

`compile_constraint` runs when a request is made: it looks the kind up in the plugin registry,
builds the grammar and an llguidance matcher, and checks that the matcher is usable and that some
token can start the output, so an invalid or unsatisfiable constraint is a ValueError then, not
a hang or an empty output later. Each sequence then owns a `ConstraintMatcher` (a copy of the
compiled one), advanced with every token sampled for it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from pyllm.constraints.spec import requested_constraint
from pyllm.constraints.tokenizer import llg_tokenizer

__all__ = ["ConstraintMatcher", "compile_constraint", "mask_words"]

# (id(tokenizer), kind, spec) -> (weak reference to the tokenizer, compiled matcher); the
# reference is checked on a hit, so a new tokenizer that reuses a dead one's id never matches.
_COMPILED: OrderedDict[tuple[int, str, str], tuple[Any, Any]] = OrderedDict()
_COMPILED_MAX = 64
_LOCK = threading.Lock()


def mask_words(vocab_size: int) -> int:
    """int32 words in one row of a token bitmask (one bit per id: id i is bit i % 32 of word
    i // 32)."""
    return (vocab_size + 31) // 32


class ConstraintMatcher:
    """One sequence's position in its constraint."""

    def __init__(self, matcher: Any, kind: str) -> None:
        self._m = matcher
        self.kind = kind

    def fill_mask(self, row: np.ndarray) -> None:
        """Write the allowed next tokens into ``row`` (int32, C-contiguous, `mask_words` long)."""
        self._m.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def copy(self) -> ConstraintMatcher:
        """An independent matcher in the same state (n > 1 completions of one request)."""
        return ConstraintMatcher(self._m.deep_copy(), self.kind)

    @property
    def llg_matcher(self) -> Any:
        return self._m

    def advance(self, token: int) -> bool:
        """Consume a sampled token; False when it was not allowed (the matcher is then failed)."""
        return bool(self._m.consume_token(int(token)))

    @property
    def complete(self) -> bool:
        """The constraint is satisfied and nothing more may follow (the sequence ends here)."""
        return bool(self._m.is_stopped())

    @property
    def accepting(self) -> bool:
        """The output so far is a complete match (more may still follow, or the end)."""
        return bool(self._m.is_accepting())

    @property
    def failed(self) -> bool:
        return bool(self._m.is_error())

    @property
    def error(self) -> str:
        return str(self._m.get_error())


def _field_name(kind: str) -> str:
    from pyllm.constraints.spec import CONSTRAINT_FIELDS

    return kind if kind in CONSTRAINT_FIELDS else f"constraint ({kind!r})"


def _compile(tokenizer: Any, kind: str, spec: Any) -> Any:
    import llguidance

    from pyllm import plugins

    registry = plugins.constraints()
    build = registry.get(kind)
    if build is None:
        known = ", ".join(sorted(registry)) or "(none: is the pyllm_samplers plugin loaded?)"
        raise ValueError(f"unknown constraint kind {kind!r}; registered kinds: {known}")
    grammar = build(spec)
    if not isinstance(grammar, str):
        raise ValueError(
            f"constraint kind {kind!r} returned {type(grammar).__name__}, not a grammar string"
        )
    matcher = llguidance.LLMatcher(llg_tokenizer(tokenizer), grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(
            f"SamplingParams.{_field_name(kind)} cannot be used: {matcher.get_error().strip()}"
        )
    row = np.zeros(mask_words(tokenizer.vocab_size), dtype=np.int32)
    ConstraintMatcher(matcher, kind).fill_mask(row)
    if matcher.is_error() or not row.any():
        why = matcher.get_error().strip() if matcher.is_error() else "no token can start the output"
        raise ValueError(f"SamplingParams.{_field_name(kind)} is unsatisfiable: {why}")
    return matcher


def compile_constraint(params: Any, tokenizer: Any) -> ConstraintMatcher | None:
    """A fresh matcher for the constraint ``params`` asks for (None when it asks for none).

    Raises ValueError naming the field when the kind is unknown, the spec does not compile, or
    no output can satisfy it. Compiled matchers are kept (64, least recently used first out) and
    copied, so a request repeated with the same schema compiles once.
    """
    wanted = requested_constraint(params)
    if wanted is None:
        return None
    kind, spec = wanted
    key = (id(tokenizer), kind, repr(spec))
    template = None
    with _LOCK:
        hit = _COMPILED.get(key)
        if hit is not None and hit[0]() is tokenizer:
            template = hit[1]
            _COMPILED.move_to_end(key)
    if template is None:
        template = _compile(tokenizer, kind, spec)
        with _LOCK:
            _COMPILED[key] = (weakref.ref(tokenizer), template)
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
    return ConstraintMatcher(template.deep_copy(), kind)
