"""Which context length a loaded model runs with.

A model file states the context it was trained for (`llama.context_length`, a config's
`max_position_embeddings`); that number is four bytes of an untrusted header, and the memory a
model needs at load (the RoPE table) and at its first request (the KV-cache pool holds at least
one full context) grows with it. So the context in use is:

- the `context_length` the caller asked for (`pyllm.load(context_length=...)`, `--ctx`), which
  may be anything from 1 to the trained context;
- otherwise the trained context, capped at `DEFAULT_CONTEXT_CAP` tokens. When the cap applies,
  a warning on the `pyllm.model` logger says so (the CLI prints it as `warning: ...`).

8192 is SmolLM2's (the default model's) own context and what llama.cpp's server commonly runs
with; a 128k-context model then costs no more memory than an 8k one until the user asks for more.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from pyllm.model.config import ModelConfig

__all__ = ["DEFAULT_CONTEXT_CAP", "check_kv_memory", "choose_context", "with_context"]

DEFAULT_CONTEXT_CAP = 8192

log = logging.getLogger("pyllm.model")


def choose_context(trained: int, requested: int | None, where: str = "the model") -> int:
    """The context length to run with (see the module docstring); a bad `requested` is a
    ValueError naming the allowed range."""
    if requested is None:
        if trained > DEFAULT_CONTEXT_CAP:
            log.warning(
                "%s was trained for a context of %d tokens; using %d (pass --ctx N or "
                "context_length=N for more)",
                where,
                trained,
                DEFAULT_CONTEXT_CAP,
            )
            return DEFAULT_CONTEXT_CAP
        return trained
    if (
        isinstance(requested, bool)
        or not isinstance(requested, int)
        or not 1 <= requested <= trained
    ):
        raise ValueError(
            f"context_length must be an integer in [1, {trained}] (the model's "
            f"trained context), got {requested!r}"
        )
    return requested


def with_context(cfg: ModelConfig, requested: int | None, where: str = "the model") -> ModelConfig:
    """`cfg` running with the chosen context: `max_position` is the context in use and
    `trained_context` keeps what the file said."""
    trained = cfg.trained_context
    n = choose_context(trained, requested, where)
    if n == cfg.max_position:
        return cfg
    return dataclasses.replace(cfg, max_position=n, trained_context=trained)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_kv_memory(cfg: ModelConfig, where: str = "the model", memory: int | None = None) -> None:
    """Refuse a context whose KV-cache for one sequence could never fit in this machine's
    memory (the engine reserves at least one full context), instead of letting the first
    request fail in the allocator. Counted at 2 bytes per element, the smallest KV dtype, so
    only contexts that fit in no configuration are refused."""
    memory = _physical_memory() if memory is None else memory
    need = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 2 * cfg.max_position
    if memory and need > memory:
        raise ValueError(
            f"{where}: a context of {cfg.max_position} tokens needs {need / 2**30:.1f} GiB of "
            f"KV-cache for one sequence (half precision), more than this machine's "
            f"{memory / 2**30:.1f} GiB of memory; pass a smaller --ctx / context_length"
        )
