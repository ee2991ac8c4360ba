"""Options shared by the commands, so that they spell and mean the same everywhere.

- Sampling: the SamplingParams field names as flags (`--top-k` sets `top_k`), `--stop`
  (repeatable) and `--set NAME=VALUE` for any field; `run` and `chat` share SAMPLING_DEFAULTS.
- The model: `-m/--model` (run and chat also take it as their first argument).
- How it is loaded: `--int8/--exact`, `--kv-dtype`, `--device`, `--ctx` (load_options), and
  `load_llm` turns them into one `pyllm.load` call.
- `-s/--system`: the system prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from pyllm.types import KV_DTYPES

# The exit status of a JSONL job (`pyllm generate`, the task commands with -i) that finished
# but wrote an error line for some record in this run.
EXIT_RECORDS_FAILED = 3

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
    "samplers": (
        "--samplers",
        str,
        ('chain, e.g. "penalties;top_k;top_p;min_p;temperature"; none = the default chain'),
    ),
}


# The sampling defaults of `run` and `chat`: tamer than SamplingParams() (temperature 1, no
# filter), which suits small chat models badly. Every one can be changed by a flag or `--set`.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "max_tokens": 512,
}


def sampling_options(defaults: Mapping[str, Any] | None = None) -> Callable[[Any], Any]:
    """Decorate a click command with the sampling flags, `--stop` and `--set`."""
    defaults = defaults or {}

    def decorate(f: Any) -> Any:
        f = click.option(
            "--set",
            "extra_params",
            multiple=True,
            metavar="NAME=VALUE",
            help="Any SamplingParams field, e.g. --set penalty_last_n=128.",
        )(f)
        f = click.option(
            "--stop",
            "stop",
            multiple=True,
            help="A string that ends generation (repeatable; not included).",
        )(f)
        from pyllm.sampling_params import SamplingParams

        base = SamplingParams()
        for name, (flag, type_, help_) in reversed(SAMPLING_OPTIONS.items()):
            value = defaults[name] if name in defaults else getattr(base, name)
            shown = "  [default: " + ("none" if value is None else str(value)) + "]"
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
    """`--int8/--exact`: the activations the CPU matmuls run on
    (pyllm.load(int8_activations=...))."""
    return click.option(
        "--int8/--exact",
        "int8",
        default=False,
        show_default=True,
        help="CPU matmul activations: float32 (--exact, the default: the "
        "reference model's logits) or int8 per 32-value block (--int8, as "
        "llama.cpp does: 1.3x faster decode, 2-3x faster batches; logits "
        "within ~0.15 of exact on average, which flips near-tied greedy "
        "choices; see docs/kernels.md).",
    )


DEVICES = ("auto", "cpu", "cuda")


def device_option() -> Callable[[Any], Any]:
    """`--device auto|cpu|cuda`: where the model runs (resolve with `resolve_device`)."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help="Where the model runs: cuda (an NVIDIA GPU; pyllm built with its CUDA "
        "kernels), cpu, or auto: cuda when both are there, else cpu (and cpu "
        "with --int8, a CPU kernel option).",
    )


def cuda_unusable_reason() -> str | None:
    """Why `--device cuda` cannot run here, or None when it can."""
    import torch

    from pyllm import ops

    if not ops.cuda_built():
        return (
            "pyllm was built without its CUDA kernels (reinstall where nvcc is found, or with "
            "PYLLM_CUDA=ON)"
        )
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
    """`--kv-dtype`: the KV-cache element type the model is loaded with
    (pyllm.load(kv_dtype=...))."""
    return click.option(
        "--kv-dtype", type=click.Choice(KV_DTYPES), default="float32", show_default=True, help=help_
    )


# ------------------------------------------------------------------ the model and how it loads


def model_option() -> Callable[[Any], Any]:
    """`-m/--model`: a model name, alias, .gguf path or Hugging Face folder."""
    return click.option(
        "-m",
        "--model",
        "model_option",
        default=None,
        metavar="MODEL",
        help="Model: a name (smollm2), an alias (pyllm aliases), a .gguf file or "
        "a Hugging Face folder.  [default: the one `pyllm models default` "
        "set, else smollm2]",
    )


def pick_model(
    option: str | None, positional: list[str | None]
) -> tuple[str | None, list[str | None]]:
    """The model and the remaining positional arguments of a command taking `[MODEL] ARGS...`:
    with `-m MODEL` every positional argument shifts one place (`run -m smollm2 "Hi"`)."""
    if option is None:
        return positional[0], positional[1:]
    if positional[-1] is not None:
        raise click.UsageError(
            f"-m {option} names the model: give at most "
            f"{len(positional) - 1} more argument(s), got {positional!r}"
        )
    return option, positional[:-1]


def system_option(
    help_: str = "A system prompt (replaces the one the chat template adds by itself).",
) -> Callable[[Any], Any]:
    return click.option("-s", "--system", default=None, help=help_)


def ctx_option() -> Callable[[Any], Any]:
    return click.option(
        "--ctx",
        "--context-length",
        "ctx",
        type=click.IntRange(min=1),
        default=None,
        help="Context length in tokens, at most the model's trained context  "
        "[default: the trained one, at most 8192]",
    )


def load_options(
    kv_help: str = "KV-cache element type (half precision: half the memory).",
) -> Callable[[Any], Any]:
    """`--int8/--exact`, `--kv-dtype`, `--device` and `--ctx`: how a command loads its model."""

    def decorate(f: Any) -> Any:
        for option in (ctx_option(), device_option(), kv_dtype_option(kv_help), int8_option()):
            f = option(f)
        return f

    return decorate


def load_llm(
    model: str | None,
    *,
    int8: bool = False,
    kv_dtype: str = "float32",
    device: str = "auto",
    ctx: int | None = None,
) -> Any:
    """`pyllm.load` with the load options' values (progress shown when stderr is a terminal)."""
    import sys

    from pyllm.api import load

    options: dict[str, Any] = {"progress": sys.stderr.isatty(), "int8_activations": int8}
    if kv_dtype != "float32":
        options["kv_dtype"] = kv_dtype
    if ctx is not None:
        options["context_length"] = ctx
    return load(model, resolve_device(device, int8), **options)


def stdin_text() -> str | None:
    """Standard input's text when it is not a terminal (a pipe or a file), else None."""
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.read()
