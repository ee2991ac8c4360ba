"""Built-in pyllm plugin: the sampler steps.

Registered through ``register_samplers`` like any plugin's steps: ``greedy``, ``temperature``,
``top_k``, ``top_p``, ``min_p``, ``typical_p``, ``penalties``, ``logit_bias`` (the steps the fused
kernel also implements, marked ``fusable``), and ``mirostat_v2``, ``dry``, ``xtc``. Each reads its
settings from the row's SamplingParams. Loading this plugin is cheap: a step imports torch and
its implementation (``pyllm_samplers.steps``) on first use.

It also registers the built-in structured-output constraint kinds (``register_constraints``:
``json_schema``, ``json_object``, ``regex``, ``choice``, ``grammar``; pyllm.constraints.kinds).
"""

from __future__ import annotations

from typing import Any

from pyllm.hookspecs import RegisterConstraint, RegisterSampler, hookimpl

# name -> (class in pyllm_samplers.steps, runs inside the fused kernel when in the default order)
BUILTIN_STEPS: dict[str, tuple[str, bool]] = {
    "greedy": ("Greedy", False),
    "temperature": ("Temperature", True),
    "top_k": ("TopK", True),
    "top_p": ("TopP", True),
    "min_p": ("MinP", True),
    "typical_p": ("TypicalP", True),
    "penalties": ("Penalties", True),
    "logit_bias": ("LogitBias", True),
    "mirostat_v2": ("MirostatV2", False),
    "dry": ("Dry", False),
    "xtc": ("Xtc", False),
}


class LazyStep:
    """A registered step whose implementation is imported when it first runs."""

    def __init__(self, name: str, cls_name: str, fusable: bool) -> None:
        self.name = name
        self.fusable = fusable
        self._cls_name = cls_name
        self._impl: Any = None

    @property
    def impl(self) -> Any:
        if self._impl is None:
            from pyllm_samplers import steps

            self._impl = getattr(steps, self._cls_name)()
        return self._impl

    def __call__(self, logits: Any, context: Any) -> Any:
        return self.impl(logits, context)

    def __repr__(self) -> str:
        return f"<pyllm_samplers step {self.name!r}>"


@hookimpl
def register_samplers(register: RegisterSampler) -> None:
    for name, (cls_name, fusable) in BUILTIN_STEPS.items():
        register(name, LazyStep(name, cls_name, fusable))


@hookimpl
def register_constraints(register: RegisterConstraint) -> None:
    from pyllm.constraints.kinds import BUILTIN_KINDS

    for name, kind in BUILTIN_KINDS.items():
        register(name, kind)
