"""Reading and checking the ``tokenizer.ggml.*`` keys of a GGUF file's metadata.

Every array is checked before use (lengths agree, merges are well formed, ids are in range), and
a problem raises :class:`pyllm.ModelFormatError` naming the key, so a damaged file fails with a
clear message instead of producing wrong ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyllm.errors import ModelFormatError

PREFIX = "tokenizer.ggml."

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TOKEN_TYPES = frozenset({NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE})


@dataclass(frozen=True)
class GGUFVocab:
    model: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    merges: list[tuple[str, str]] | None
    pre: str | None
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_ids: tuple[int, ...]
    add_bos: bool | None
    add_space_prefix: bool | None


def _get(metadata: Mapping[str, Any], name: str) -> Any:
    return metadata.get(PREFIX + name)


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ModelFormatError(f"{key}: expected an array, got {type(value).__name__}")
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _strings(metadata: Mapping[str, Any], name: str, *, required: bool) -> list[str] | None:
    key = PREFIX + name
    value = metadata.get(key)
    if value is None:
        if required:
            raise ModelFormatError(f"{key}: missing (needed to build the tokenizer)")
        return None
    items = _as_list(value, key)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ModelFormatError(f"{key}[{i}]: expected a string, got {type(item).__name__}")
    return items


def _id(metadata: Mapping[str, Any], name: str, n_vocab: int) -> int | None:
    key = PREFIX + name
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise ModelFormatError(f"{key}: expected a token id, got {value!r}") from None
    if not 0 <= value < n_vocab:
        raise ModelFormatError(
            f"{key}: token id {value} is outside the vocabulary (0..{n_vocab - 1})"
        )
    return value


def _flag(metadata: Mapping[str, Any], name: str) -> bool | None:
    key = PREFIX + name
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, (bool, int)):
        raise ModelFormatError(f"{key}: expected a boolean, got {value!r}")
    return bool(value)


def read_vocab(metadata: Mapping[str, Any], *, expect_model: str | Sequence[str]) -> GGUFVocab:
    """Read and validate the tokenizer keys. ``expect_model`` is the accepted
    ``tokenizer.ggml.model`` value(s) (absent is accepted: the caller chose the kind)."""
    accepted = (expect_model,) if isinstance(expect_model, str) else tuple(expect_model)
    model = _get(metadata, "model")
    if model is not None and model not in accepted:
        raise ModelFormatError(
            f"{PREFIX}model: {model!r} is not a {' / '.join(accepted)} vocabulary"
        )
    tokens = _strings(metadata, "tokens", required=True)
    assert tokens is not None
    n = len(tokens)
    if n == 0:
        raise ModelFormatError(f"{PREFIX}tokens: the vocabulary is empty")

    types_key = PREFIX + "token_type"
    raw_types = metadata.get(types_key)
    if raw_types is None:
        types = [NORMAL] * n
    else:
        # GGUF gives an integer array already; anything else (tests' metadata) goes through int().
        arr = (
            raw_types
            if isinstance(raw_types, np.ndarray) and raw_types.dtype.kind in "iu"
            else np.array([int(t) for t in _as_list(raw_types, types_key)], dtype=np.int64)
        )
        bad = ~np.isin(arr, list(TOKEN_TYPES))
        if bad.any():
            i = int(np.argmax(bad))
            raise ModelFormatError(f"{types_key}[{i}]: unknown token type {int(arr[i])}")
        types = arr.tolist()
        if len(types) != n:
            raise ModelFormatError(
                f"{types_key}: {len(types)} entries for {n} tokens ({PREFIX}tokens)"
            )

    scores_key = PREFIX + "scores"
    raw_scores = metadata.get(scores_key)
    scores = None
    if raw_scores is not None:
        scores = [float(s) for s in _as_list(raw_scores, scores_key)]
        if len(scores) != n:
            raise ModelFormatError(
                f"{scores_key}: {len(scores)} entries for {n} tokens ({PREFIX}tokens)"
            )
        for i, s in enumerate(scores):
            if math.isnan(s):
                raise ModelFormatError(f"{scores_key}[{i}]: score is NaN")

    merges = None
    raw_merges = _strings(metadata, "merges", required=False)
    if raw_merges is not None:
        merges = []
        for i, m in enumerate(raw_merges):
            parts = m.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ModelFormatError(
                    f"{PREFIX}merges[{i}]: expected two tokens separated by one space, got {m!r}"
                )
            merges.append((parts[0], parts[1]))

    eot_ids = []
    for name in ("eot_token_id", "eom_token_id"):
        v = _id(metadata, name, n)
        if v is not None:
            eot_ids.append(v)

    bos_id = _id(metadata, "bos_token_id", n)
    add_bos = _flag(metadata, "add_bos_token")
    if add_bos and bos_id is None:
        # Refused here rather than at the first encode, which would fail every request.
        raise ModelFormatError(
            f"{PREFIX}add_bos_token: true, but {PREFIX}bos_token_id is "
            f"missing (no BOS token to add)"
        )
    pre = _get(metadata, "pre")
    return GGUFVocab(
        model=str(model) if model is not None else accepted[0],
        tokens=tokens,
        token_types=types,
        scores=scores,
        merges=merges,
        pre=str(pre) if pre is not None else None,
        bos_id=bos_id,
        eos_id=_id(metadata, "eos_token_id", n),
        unk_id=_id(metadata, "unknown_token_id", n),
        pad_id=_id(metadata, "padding_token_id", n),
        eot_ids=tuple(eot_ids),
        add_bos=add_bos,
        add_space_prefix=_flag(metadata, "add_space_prefix"),
    )


def check_merges_in_vocab(vocab: GGUFVocab, token_to_id: Mapping[str, int]) -> None:
    """Every merge must join two tokens of the vocabulary into a third one."""
    assert vocab.merges is not None
    for i, (a, b) in enumerate(vocab.merges):
        for part in (a, b, a + b):
            if part not in token_to_id:
                raise ModelFormatError(
                    f"{PREFIX}merges[{i}]: {a + ' ' + b!r} uses {part!r}, which is not in "
                    f"{PREFIX}tokens"
                )
