"""SamplingParams: how one request is sampled, with the names people know from vLLM and llama.cpp.

Every field is checked when the object is built: a bad value raises a ``ValueError`` that names
the field and the allowed range. ``from_mapping`` builds one from a dict of overrides (a JSONL
record, ``--set name=value`` pairs from the CLI/REPL), converting strings where needed and naming
the nearest valid field for a typo.

This module imports nothing heavy (no torch): the CLI reads it at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_SAMPLERS",
    "INT_LIMIT",
    "MAX_LOGPROBS",
    "MAX_N",
    "SamplingParams",
    "split_chain",
]

# The built-in steps in the order the fused kernel applies them (docs/kernels.md).
DEFAULT_SAMPLERS = "penalties;logit_bias;top_k;typical_p;top_p;min_p;temperature"
MAX_LOGPROBS = 20  # top-n alternatives per token, as OpenAI / vLLM's default cap
MAX_N = 128  # completions per prompt, OpenAI's cap: each one holds its own KV-cache and state
INT_LIMIT = 2**31 - 1  # every other integer field (token counts, ids, top_k) fits an int32
_SEED_LIMIT = 2**64


def split_chain(chain: str) -> list[str]:
    """``"penalties; top_k;temperature"`` -> ``["penalties", "top_k", "temperature"]``.

    Steps are separated by ``;`` (llama.cpp's ``--samplers``); ``,`` is accepted too. Names are
    lower-cased and ``-`` is read as ``_`` (``top-k`` == ``top_k``).
    """
    parts = chain.replace(",", ";").split(";")
    return [p.strip().lower().replace("-", "_") for p in parts if p.strip()]


def field_error(name: str, allowed: str, value: Any) -> NoReturn:
    """Raise the ValueError for a bad SamplingParams field (pyllm/constraints/spec.py too)."""
    raise ValueError(f"SamplingParams.{name} must be {allowed}, got {value!r}")


_fail = field_error


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request.

    Generation length:
        n: completions per prompt (1..MAX_N = 128).
        max_tokens: most tokens to generate (>= 1).
        (Every integer field but ``seed`` is at most ``INT_LIMIT`` = 2**31-1.)
        min_tokens: EOS and stop tokens are masked until this many were generated (0..max_tokens).
    Distribution shaping (applied in this order by default, see ``samplers``):
        repetition_penalty: > 0; 1 = off. Divides positive logits / multiplies negative ones of
            tokens seen in the last ``penalty_last_n`` tokens (CTRL, Keskar et al. 2019).
        frequency_penalty: -2..2; subtracts ``count * frequency_penalty`` (OpenAI).
        presence_penalty: -2..2; subtracts ``presence_penalty`` once per seen token (OpenAI).
        penalty_last_n: how many recent tokens (prompt and output) the penalties look at;
            0 = off, -1 = the whole context.
        logit_bias: ``{token_id: bias}`` added to the logits; bias in -100..100, or ``-inf`` to ban.
        top_k: keep the k most likely tokens; 0 = off (-1 is read as 0, as vLLM spells off).
        typical_p: locally typical sampling (Meister et al. 2022); 1 = off.
        top_p: nucleus sampling (Holtzman et al. 2019); 1 = off.
        min_p: drop tokens whose probability < min_p * the top probability; 0 = off.
        temperature: divides the logits; 0 = greedy (argmax, ties to the lowest id).
    Other strategies (only when named in ``samplers``):
        mirostat_tau, mirostat_eta: Mirostat 2.0 target surprise (bits) and learning rate.
        dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers:
            DRY repetition penalty (multiplier 0 = off).
        xtc_probability, xtc_threshold: Exclude Top Choices (probability 0 = off).
    Structured output (at most one; see docs/structured.md):
        json_schema: a JSON schema (dict or JSON text) the output must match.
        json_object: True = the output is any JSON object.
        regex: a regular expression the whole output must match.
        choice: the output is exactly one of these strings.
        grammar: a Lark-style context-free grammar (llguidance's dialect).
        constraint: ``(kind, spec)`` for a kind registered through ``register_constraints``.
    Randomness and output:
        seed: 0..2**64-1, or None for a fresh random seed per request. A seeded request draws the
            same tokens alone or inside any batch (and on CPU or GPU).
        stop: strings that end generation (not included in the output).
        stop_token_ids: token ids that end generation, besides the model's EOS ids.
        ignore_eos: keep generating past EOS (benchmarks).
        logprobs: return this many top alternatives (with log-probs) per token, 0..20; None = no
            log-probs at all; 0 = only the sampled token's.
        samplers: the chain, llama.cpp style: ``"penalties;top_k;top_p;min_p;temperature"``;
            None = ``DEFAULT_SAMPLERS``. Step names are checked against the registered samplers
            when the chain is built (pyllm.sampler).
    """

    n: int = 1
    max_tokens: int = 256
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    samplers: str | None = None
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    json_schema: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    constraint: tuple[str, Any] | None = None

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:  # the dataclass is frozen
            object.__setattr__(self, name, value)

        def integer(name: str, lo: int, hi: int | None = None, allowed: str = "") -> int:
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            rng = allowed or (f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}")
            if hi is None:
                hi, rng = INT_LIMIT, f"{rng}, at most 2**31-1"
            if not _is_int(v) or v < lo or v > hi:
                _fail(name, rng, getattr(self, name))
            set_(name, int(v))
            return int(v)

        def number(name: str, lo: float, hi: float, allowed: str, lo_open: bool = False) -> float:
            v = getattr(self, name)
            ok = _is_num(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
            if not ok:
                _fail(name, allowed, v)
            set_(name, float(v))
            return float(v)

        integer("n", 1, MAX_N)
        integer("max_tokens", 1)
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            _fail("min_tokens", f"an integer in 0..max_tokens ({self.max_tokens})", self.min_tokens)
        number("temperature", 0.0, math.inf, "a finite number >= 0 (0 = greedy)")
        if _is_int(self.top_k) and self.top_k == -1:
            set_("top_k", 0)
        integer("top_k", 0, allowed="an integer >= 0 (0 or -1 = off)")
        number("top_p", 0.0, 1.0, "in (0, 1] (1 = off)", lo_open=True)
        number("min_p", 0.0, 1.0, "in [0, 1] (0 = off)")
        number("typical_p", 0.0, 1.0, "in (0, 1] (1 = off)", lo_open=True)
        number("repetition_penalty", 0.0, math.inf, "a finite number > 0 (1 = off)", lo_open=True)
        number("frequency_penalty", -2.0, 2.0, "in [-2, 2] (0 = off)")
        number("presence_penalty", -2.0, 2.0, "in [-2, 2] (0 = off)")
        integer("penalty_last_n", -1, allowed="an integer >= -1 (0 = off, -1 = whole context)")
        set_("logit_bias", self._checked_logit_bias(self.logit_bias))
        if self.seed is not None:
            integer("seed", 0, _SEED_LIMIT - 1, allowed="None or an integer in 0..2**64-1")
        set_("stop", self._checked_strings("stop", self.stop))
        set_("stop_token_ids", self._checked_ids("stop_token_ids", self.stop_token_ids))
        if not isinstance(self.ignore_eos, bool):
            _fail("ignore_eos", "True or False", self.ignore_eos)
        if self.logprobs is not None:
            integer("logprobs", 0, MAX_LOGPROBS, allowed=f"None or an integer in 0..{MAX_LOGPROBS}")
        if self.samplers is not None:
            chain = self.samplers
            if isinstance(chain, (list, tuple)):
                chain = ";".join(str(s) for s in chain)
            if not isinstance(chain, str) or not split_chain(chain):
                _fail(
                    "samplers",
                    'a chain such as "penalties;top_k;top_p;min_p;temperature"',
                    self.samplers,
                )
            set_("samplers", ";".join(split_chain(chain)))
        number(
            "mirostat_tau",
            0.0,
            math.inf,
            "a finite number > 0 (target surprise, bits)",
            lo_open=True,
        )
        number("mirostat_eta", 0.0, 1.0, "in (0, 1]", lo_open=True)
        number("dry_multiplier", 0.0, math.inf, "a finite number >= 0 (0 = off)")
        number("dry_base", 1.0, math.inf, "a finite number >= 1")
        integer("dry_allowed_length", 1)
        integer("dry_penalty_last_n", -1, allowed="an integer >= -1 (0 = off, -1 = whole context)")
        set_(
            "dry_sequence_breakers",
            self._checked_strings("dry_sequence_breakers", self.dry_sequence_breakers),
        )
        number("xtc_probability", 0.0, 1.0, "in [0, 1] (0 = off)")
        number("xtc_threshold", 0.0, 1.0, "in [0, 1] (> 0.5 = off)")
        from pyllm.constraints.spec import CONSTRAINT_FIELDS, normalize_constraint_fields

        for name, value in normalize_constraint_fields(
            {name: getattr(self, name) for name in CONSTRAINT_FIELDS}
        ).items():
            set_(name, value)

    @staticmethod
    def _checked_logit_bias(bias: Any) -> dict[int, float] | None:
        if bias is None:
            return None
        if not isinstance(bias, Mapping):
            _fail("logit_bias", "None or a mapping {token_id: bias}", bias)
        out: dict[int, float] = {}
        for key, value in bias.items():
            try:
                tid = int(key)  # JSON object keys arrive as strings
            except (TypeError, ValueError):
                tid = -1
            if (
                not 0 <= tid <= INT_LIMIT
                or isinstance(key, bool)
                or (isinstance(key, float) and not key.is_integer())
            ):
                _fail("logit_bias", "keyed by token ids (integers in 0..2**31-1)", key)
            ok = _is_num(value) and (
                value == -math.inf or (math.isfinite(value) and abs(value) <= 100)
            )
            if not ok:
                _fail(f"logit_bias[{tid}]", "a number in [-100, 100] or -inf (ban)", value)
            out[tid] = float(value)
        return out or None

    @staticmethod
    def _checked_strings(name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
            _fail(name, "a string or a list of non-empty strings", value)
        return tuple(value)

    @staticmethod
    def _checked_ids(name: str, value: Any) -> tuple[int, ...]:
        if _is_int(value):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(
            _is_int(i) and 0 <= i <= INT_LIMIT for i in value
        ):
            _fail(name, "a list of token ids (integers in 0..2**31-1)", value)
        return tuple(int(i) for i in value)

    def __hash__(self) -> int:  # logit_bias is a dict: hash its items instead
        return hash(
            tuple(
                tuple(sorted(v.items())) if isinstance(v, Mapping) else v
                for v in (getattr(self, f.name) for f in fields(self))
            )
        )

    # ------------------------------------------------------------------ helpers

    @property
    def greedy_draw(self) -> bool:
        """True when the draw is an argmax (temperature 0)."""
        return self.temperature == 0.0

    @classmethod
    def greedy(cls, **overrides: Any) -> SamplingParams:
        """Greedy decoding: temperature 0 (argmax, ties to the lowest id), no other filter."""
        return cls(temperature=0.0, **overrides)

    def replace(self, **overrides: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        _check_names(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The public fields as plain JSON-friendly values."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("stop", "stop_token_ids", "dry_sequence_breakers"):
            out[key] = list(out[key])
        if out["logit_bias"] is not None:
            out["logit_bias"] = dict(out["logit_bias"])
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, base: SamplingParams | None = None
    ) -> SamplingParams:
        """SamplingParams from ``{field: value}`` overrides (a JSONL record, CLI ``--set`` pairs).

        Values may be strings (``"0.7"``, ``"true"``, ``"none"``, a JSON list or object) and are
        converted to each field's type; lists become tuples. ``base`` supplies the fields not
        given (the defaults when None). An unknown field raises a ValueError naming it and the
        nearest valid name.
        """
        _check_names(mapping)
        values = {name: _coerce(name, value) for name, value in mapping.items()}
        return dataclasses.replace(base, **values) if base is not None else cls(**values)


_INT_FIELDS = {
    "n",
    "max_tokens",
    "min_tokens",
    "top_k",
    "penalty_last_n",
    "dry_allowed_length",
    "dry_penalty_last_n",
}
_OPTIONAL_INT_FIELDS = {"seed", "logprobs"}
_BOOL_FIELDS = {"ignore_eos", "json_object"}
_TEXT_FIELDS = {"json_schema", "regex", "grammar"}  # kept as given (a regex "1" is not a number)
_STR_LIST_FIELDS = {"stop", "dry_sequence_breakers"}


def _check_names(mapping: Mapping[str, Any]) -> None:
    names = SamplingParams.field_names()
    for key in mapping:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid names: {', '.join(names)}"
            raise ValueError(f"unknown sampling parameter {key!r}{hint}")


def _coerce(name: str, value: Any) -> Any:
    """Turn a CLI/JSONL value into the field's type; invalid values are left for validation."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    text = value.strip()
    if name in _TEXT_FIELDS:
        return value
    if name in ("choice", "constraint"):  # a JSON list / object, or for choice "a,b,c"
        if text.startswith(("[", "{")):
            try:
                parsed = json.loads(text)
                return tuple(parsed) if isinstance(parsed, list) else parsed
            except ValueError:
                return value
        return tuple(c.strip() for c in text.split(",")) if name == "choice" else value
    if name == "samplers":
        return None if text.lower() in ("", "none", "default") else text
    if text.lower() in ("none", "null") and name in _OPTIONAL_INT_FIELDS | {"logit_bias"}:
        return None
    try:
        if name in _STR_LIST_FIELDS:
            parsed = json.loads(text) if text.startswith("[") else None
            return tuple(parsed) if isinstance(parsed, list) else (value,)
        if name in _BOOL_FIELDS:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            return value
        if name in _INT_FIELDS or name in _OPTIONAL_INT_FIELDS:
            return int(text)
        if name in ("logit_bias", "stop_token_ids"):
            parsed = json.loads(text)
            return tuple(parsed) if isinstance(parsed, list) else parsed
        return float(text)
    except ValueError:
        return value  # the validator names the field and the allowed range
