"""Sampling options shared by every command that generates: the SamplingParams field names as
flags (`--top-k` sets `top_k`), plus `--stop` (repeatable) and `--set NAME=VALUE` for any field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from pyllm.types import KV_DTYPES

# SamplingParams field -> (flag, type, help)
SAMPLING_OPTIONS: dict[str, tuple[str, type, str]] = {
    "max_tokens": ("--max-tokens", int, "most tokens to generate"),
    "temperature": ("--temperature", float, "0 = greedy"),
    "top_k": ("--top-k", int, "0 = off"),
    "top_p": ("--top-p", float, "1 = off"),
    "min_p": ("--min-p", float, "0 = off"),
    "typical_p": ("--typical-p", float, "1 = off"),
    "repetition_penalty": ("--repetition-penalty", float, "1 = off"),
    "frequency_penalty": ("--frequency-penalty", float, "0 = off"),
    "presence_penalty": ("--presence-penalty", float, "0 = off"),
    "seed": ("--seed", int, "fixed random stream (same tokens alone or in any batch)"),
    "samplers": ("--samplers", str, 'chain, e.g. "penalties;top_k;top_p;min_p;temperature"'),
}


def sampling_options(defaults: Mapping[str, Any] | None = None) -> Callable[[Any], Any]:
    """Decorate a click command with the sampling flags, `--stop` and `--set`."""
    defaults = defaults or {}

    def decorate(f: Any) -> Any:
        f = click.option("--set", "extra_params", multiple=True, metavar="NAME=VALUE",
                         help="Any SamplingParams field, e.g. --set penalty_last_n=128.")(f)
        f = click.option("--stop", "stop", multiple=True,
                         help="A string that ends generation (repeatable; not included).")(f)
        for name, (flag, type_, help_) in reversed(SAMPLING_OPTIONS.items()):
            shown = f" [default: {defaults[name]}]" if name in defaults else ""
            f = click.option(flag, name, type=type_, default=None, help=f"{help_}{shown}")(f)
        return f

    return decorate


def pop_sampling_params(kwargs: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> Any:
    """Remove the sampling flags from a command's kwargs and build SamplingParams from the
    defaults, then the flags given, then `--set` pairs (a bad one names the field)."""
    from pyllm.sampling_params import SamplingParams

    values: dict[str, Any] = dict(defaults or {})
    for name in SAMPLING_OPTIONS:
        value = kwargs.pop(name, None)
        if value is not None:
            values[name] = value
    stop = kwargs.pop("stop", ())
    if stop:
        values["stop"] = tuple(stop)
    for item in kwargs.pop("extra_params", ()):
        name, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        values[name.strip().replace("-", "_")] = value
    return SamplingParams.from_mapping(values)


def int8_option() -> Callable[[Any], Any]:
    """`--int8/--exact`: the activations the CPU matmuls run on (pyllm.load(int8_activations=...))."""
    return click.option("--int8/--exact", "int8", default=False, show_default=True,
                        help="CPU matmul activations: float32 (--exact, the default: the reference "
                             "model's logits) or int8 per 32-value block (--int8, as llama.cpp does: "
                             "1.3x faster decode, 2-3x faster batches; logits within ~0.15 of exact "
                             "on average, which flips near-tied greedy choices; see docs/kernels.md).")


DEVICES = ("auto", "cpu", "cuda")


def device_option() -> Callable[[Any], Any]:
    """`--device auto|cpu|cuda`: where the model runs (resolve with `resolve_device`)."""
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="Where the model runs: cuda (an NVIDIA GPU; pyllm built with its CUDA "
                             "kernels), cpu, or auto: cuda when both are there, else cpu (and cpu "
                             "with --int8, a CPU kernel option).")


def cuda_unusable_reason() -> str | None:
    """Why `--device cuda` cannot run here, or None when it can."""
    import torch

    from pyllm import ops

    if not ops.cuda_built():
        return ("pyllm was built without its CUDA kernels (reinstall where nvcc is found, or with "
                "PYLLM_CUDA=ON)")
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (no NVIDIA GPU or driver here, or a CPU-only torch)"
    return None


def resolve_device(device: str, int8: bool = False) -> str:
    """The device a command loads its model on; a UsageError says why cuda cannot be used."""
    if device == "auto":
        return "cpu" if int8 or cuda_unusable_reason() is not None else "cuda"
    if device == "cuda":
        if int8:
            raise click.UsageError("--int8 selects CPU kernels; drop it, or use --device cpu")
        reason = cuda_unusable_reason()
        if reason is not None:
            raise click.UsageError(f"--device cuda: {reason}")
    return device


def kv_dtype_option(help_: str) -> Callable[[Any], Any]:
    """`--kv-dtype`: the KV-cache element type the model is loaded with (pyllm.load(kv_dtype=...))."""
    return click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default="float32", show_default=True,
                        help=help_)
