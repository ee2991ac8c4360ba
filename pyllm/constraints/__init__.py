"""Structured output: constraints that decide which tokens may come next (docs/structured.md).

A request asks for one constraint through SamplingParams (``json_schema``, ``json_object``,
``regex``, ``choice``, ``grammar``, or ``constraint=(kind, spec)`` for a plugin's kind). The
engine compiles it when the request is made (`compile_constraint`), computes each step's token
bitmask on a worker thread while the model runs (`MaskWorker`), hands the mask to the sampler,
and advances the sequence's matcher with the sampled token. llguidance does the matching.

Kinds are registered through the ``register_constraints`` plugin hook; the built-ins
(`pyllm.constraints.kinds`) go through it too.
"""

from __future__ import annotations

from pyllm.constraints.spec import CONSTRAINT_FIELDS, requested_constraint

__all__ = [
    "CONSTRAINT_FIELDS",
    "ConstraintMatcher",
    "MaskWorker",
    "apply_token_mask",
    "compile_constraint",
    "compute_masks",
    "mask_words",
    "requested_constraint",
]


def __getattr__(name: str):  # the matcher side imports numpy, torch and llguidance: on demand
    if name in ("compile_constraint", "ConstraintMatcher", "mask_words"):
        from pyllm.constraints import matcher

        return getattr(matcher, name)
    if name in ("MaskWorker", "compute_masks", "apply_token_mask"):
        from pyllm.constraints import masks

        return getattr(masks, name)
    raise AttributeError(f"module 'pyllm.constraints' has no attribute {name!r}")
