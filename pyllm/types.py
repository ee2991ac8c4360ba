"""The public types a plugin may use.

Everything a plugin sees of pyllm is described here: the :class:`Tokenizer`, :class:`SamplerStep`,
:class:`TaskAdapter` and :class:`ModelSource` protocols, the :class:`SamplingContext` a sampler step
receives, and the :class:`Message` of a conversation. The protocols are structural
(``typing.Protocol``): a plugin implements them without importing or subclassing anything.

This module imports nothing heavy; torch appears only under ``TYPE_CHECKING`` so that loading a
plugin's types never pulls torch in (``pyllm --help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, runtime_checkable

# The KV-cache element types a model can be loaded with (pyllm.load(kv_dtype=...), --kv-dtype).
KV_DTYPES = ("float32", "float16", "bfloat16")

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from pyllm.sampling_params import SamplingParams

__all__ = [
    "Message",
    "ModelSource",
    "ReplHandler",
    "Role",
    "SamplerStep",
    "SamplingContext",
    "TaskAdapter",
    "Tokenizer",
    "TokenizerFactory",
]

Role = Literal["system", "user", "assistant", "tool"]


class Message(TypedDict):
    """One turn of a conversation, as chat templates expect it."""

    role: str  # "system" | "user" | "assistant" (templates may know others)
    content: str


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids for one model.

    Attributes:
        vocab_size: number of ids; valid ids are ``0 <= id < vocab_size``.
        bos_id: the beginning-of-sequence id, or None when the model has none.
        eos_id: the end-of-sequence id, or None.
        eos_ids: every id that ends generation (eos plus end-of-turn tokens such as
            ``<|im_end|>``, ``<|eot_id|>``, ``<|endoftext|>`` when the vocabulary has them).
        add_bos: whether :meth:`encode` prepends BOS by default (from the model's metadata).
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = False
    ) -> list[int]:
        """Token ids for ``text``.

        :param add_bos: prepend BOS; None means the model's default (:attr:`add_bos`).
        :param parse_special: when False (the default) special-token strings such as
            ``<|im_end|>`` in ``text`` are tokenized as ordinary text, so user input cannot inject
            control tokens. Chat templates pass True.
        """
        ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text for ``ids``. Raises ``ValueError`` naming an id outside the vocabulary."""
        ...

    def token_bytes(self, id: int) -> bytes:
        """The raw bytes token ``id`` stands for (may be part of a UTF-8 character).

        The concatenation of ``token_bytes`` over a sequence, decoded as UTF-8 (with
        ``errors="replace"``), equals :meth:`decode` of that sequence, apart from the leading-space
        handling of SentencePiece tokenizers, which incremental decoders handle (see
        :mod:`pyllm.engine.detokenize`).
        """
        ...

    def id_to_piece(self, id: int) -> str:
        """The vocabulary string of token ``id`` (e.g. ``"Ġthe"`` or ``"▁the"``)."""
        ...


TokenizerFactory = Callable[[Mapping[str, Any], "Path | None"], Tokenizer]
"""``factory(metadata, path) -> Tokenizer``: what ``register_tokenizers`` registers.

``metadata`` is a GGUF metadata mapping (``tokenizer.ggml.*`` keys ...), possibly empty;
``path`` is a tokenizer file (tokenizer.json, a SentencePiece .model) or None.
"""


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass
class SamplingContext:
    """What a :class:`SamplerStep` may look at besides the logits, one entry per batch row.

    Attributes:
        params: the request's SamplingParams for each row.
        prompt_ids: each row's prompt token ids.
        output_ids: each row's generated token ids so far.
        state: a dict per row that lives as long as the request; a step may keep its own state
            there under its own name (e.g. mirostat's ``mu``).
    """

    params: Sequence[SamplingParams]
    prompt_ids: Sequence[Sequence[int]]
    output_ids: Sequence[Sequence[int]]
    state: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class SamplerStep(Protocol):
    """One step of a sampler chain: logits in, filtered logits out.

    ``name`` is how a chain string (``SamplingParams.samplers``, e.g. ``"top_k;my_step"``) refers
    to the step. ``__call__(logits, context)`` takes float32 logits ``[B, V]`` and returns logits of
    the same shape, with ``-inf`` for removed tokens. It may modify ``logits`` in place and return
    it.
    """

    name: str

    def __call__(self, logits: Tensor, context: SamplingContext) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# Tasks and model sources
# --------------------------------------------------------------------------------------------


@runtime_checkable
class TaskAdapter(Protocol):
    """A task (classification, QA, translation...) built on a loaded model.

    Attributes:
        name: how the CLI, the REPL and ``pyllm.tasks.get(name)`` find the task.
        description: one line for listings.
        input_fields: the string fields a record must have (e.g. ``("text",)``); JSONL jobs
            (``pyllm.tasks.run_jsonl``) check them before calling :meth:`run`.

    ``run(llm, records, **options)`` works on a batch: ``llm`` is a loaded ``pyllm.LLM``,
    ``records`` a sequence of JSON-like mappings (the input fields, extra keys ignored), and the
    options are the task's own keyword arguments (labels, languages...). It returns one
    JSON-serialisable dict per record, in order, and raises ``ValueError`` for bad input (a JSONL
    job then retries the batch record by record, so only the bad record gets an error line).
    """

    name: str
    description: str

    # Read-only, so a class attribute such as ``input_fields = ("text",)`` (a ``tuple[str]`` to a
    # type checker) satisfies it.
    @property
    def input_fields(self) -> tuple[str, ...]: ...

    def run(
        self, llm: Any, records: Sequence[Mapping[str, Any]], **options: Any
    ) -> list[dict[str, Any]]: ...


@runtime_checkable
class ModelSource(Protocol):
    """Where models come from: a local file, a Hugging Face folder, the default model...

    ``can_resolve(spec)`` says whether this source understands ``spec`` (a path, a name, a URL);
    ``resolve(spec, progress=True)`` returns a local path (a .gguf file or a Hugging Face folder),
    downloading it first if needed (with a progress bar when ``progress``).
    """

    name: str

    def can_resolve(self, spec: str) -> bool: ...

    def resolve(self, spec: str, *, progress: bool = True) -> Path: ...


ReplHandler = Callable[..., Any]
"""A REPL command handler, registered by ``register_repl_commands``.

Called as ``handler(session, arg)`` where ``arg`` is the rest of the line after the command name.
"""
