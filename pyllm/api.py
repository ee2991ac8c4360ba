"""The Python API: `pyllm.load()` -> `LLM` with generate / stream / chat / score.

    llm = pyllm.load("smollm2")                     # or a .gguf path, or a Hugging Face folder
    out = llm.generate(["Once upon a time"], pyllm.SamplingParams(max_tokens=32))
    print(out[0].text, out[0].finish_reason)
    for delta in llm.stream([{"role": "user", "content": "Hi!"}]):
        print(delta, end="")

A prompt is a string, a list of chat messages (`{"role", "content"}`, rendered with the model's
chat template), or a list of token ids. Prompts longer than the context length are refused with
`pyllm.ContextLengthError` (both lengths in the message) unless the caller passes
`truncate="left"`, which keeps the prompt's end.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from pyllm.chat import ChatTemplate, is_messages
from pyllm.embedding import embed_ids
from pyllm.errors import ContextLengthError, ModelFormatError
from pyllm.generation import GenerationResult, ScoredToken, StreamEvent, score_ids
from pyllm.model.loader import LoadedModel, load_model
from pyllm.sampling_params import SamplingParams
from pyllm.types import KV_DTYPES, Message, Tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.engine.frontend import EngineFrontend
    from pyllm.engine.llm_engine import EngineConfig

Prompt = str | Sequence[Message] | Sequence[int]

TRUNCATE_POLICIES = (None, "left")


def load(
    name_or_path: str | Path | None = None,
    device: str = "cpu",
    *,
    context_length: int | None = None,
    progress: bool = True,
    int8_activations: bool = False,
    kv_dtype: str = "float32",
) -> LLM:
    """Load a model by name (`smollm2`, the default when None), `.gguf` path or Hugging Face
    folder; the default model is pulled (and hash-checked) on first use.

    `context_length` caps the tokens one sequence may hold (default: the model's trained
    context, at most 8192 tokens: see pyllm/model/context.py); prompts beyond it are refused,
    or cut with `truncate="left"`.

    `int8_activations=True` opts in to the int8-activation kernels on the CPU (activations
    quantized per 32-value block, as llama.cpp does: ~1.3x faster decode, 2-3x faster batches;
    logits move by ~0.15 on average, see docs/kernels.md); the default is exact.
    `kv_dtype` ("float32", "float16" or "bfloat16") is the KV-cache's element type: half the
    memory and attention's memory traffic with half precision (llama.cpp's default is float16);
    float32 is exact.
    """
    from pyllm.weights.resolve import resolve_model

    path = resolve_model(None if name_or_path is None else str(name_or_path), progress=progress)
    try:
        return LLM.from_path(
            path,
            device=device,
            context_length=context_length,
            int8_activations=int8_activations,
            kv_dtype=kv_dtype,
        )
    except ModelFormatError as e:  # a model in the cache that does not parse: say how to fix it
        from pyllm.weights.pull import damaged_hint

        hint = damaged_hint(path)
        if hint is None:
            raise
        raise ModelFormatError(f"{e}; {hint}") from e


class LLM:
    """A loaded model with its tokenizer and chat template."""

    def __init__(
        self,
        loaded: LoadedModel,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate,
        name: str | None = None,
        kv_dtype: str = "float32",
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.name = name or loaded.path.name
        self._engine: EngineFrontend | None = None
        self._engine_config: EngineConfig | None = None
        self._engine_lock = threading.Lock()  # two threads' first calls make one engine
        self.kv_dtype = kv_dtype  # the KV-cache's element type (one of KV_DTYPES)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        device: str = "cpu",
        *,
        context_length: int | None = None,
        int8_activations: bool = False,
        kv_dtype: str = "float32",
    ) -> LLM:
        from pyllm.tokenizer import load_tokenizer

        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
        _check_device(device)
        loaded = load_model(path, device=device, context_length=context_length)
        loaded.model.int8_activations = int8_activations
        if loaded.kind == "gguf":
            tok = load_tokenizer(loaded.metadata, origin=loaded.path)
        else:
            tok = load_tokenizer({}, loaded.path, origin=loaded.path)
        if tok.vocab_size > loaded.config.vocab_size:
            from pyllm.errors import ModelFormatError

            raise ModelFormatError(
                f"{loaded.path}: the tokenizer has {tok.vocab_size} tokens but "
                f"the model only {loaded.config.vocab_size}"
            )
        special = {"bos_token": _piece(tok, tok.bos_id), "eos_token": _piece(tok, tok.eos_id)}
        if loaded.kind == "gguf":
            template = ChatTemplate.from_gguf_metadata(loaded.metadata, **special)
        else:
            template = ChatTemplate.from_hf_folder(loaded.path, **special)
        return cls(loaded, tok, template, kv_dtype=kv_dtype)

    # ------------------------------------------------------------------ properties

    @property
    def context_length(self) -> int:
        """Most tokens (prompt and generated) one sequence may hold."""
        return self.config.max_position

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ prompts

    def render_chat(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages`; `tools` (OpenAI's function
        tool objects) are handed to a template that reads them (`chat_template.supports_tools`)."""
        extra: dict[str, Any] = {} if tools is None else {"tools": list(tools)}
        return self.chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, **extra
        )

    def encode_prompt(
        self,
        prompt: Prompt,
        *,
        truncate: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of a prompt: text (the tokenizer's BOS default; special-token strings are
        plain text), chat messages (rendered, then tokenized with special tokens recognized and
        no extra BOS: templates write their own), or token ids (checked against the vocabulary).
        Text the vocabulary cannot represent is logged once per prompt (pyllm.tokenizer).
        A prompt too long to fit in any case is refused (or cut, with truncate="left") before
        it is tokenized: see pyllm/prompt_limits.py.
        """
        from pyllm.prompt_limits import bound_prompt
        from pyllm.tokenizer import request_scope

        prompt = bound_prompt(
            prompt, context_length=self.context_length, tokenizer=self.tokenizer, truncate=truncate
        )
        with request_scope():
            return self._encode_prompt(prompt, tools)

    def _encode_prompt(
        self, prompt: Prompt, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if is_messages(prompt):
            return self._encode_chat(prompt, tools)
        if isinstance(prompt, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = [int(t) for t in cast("Sequence[int]", prompt)]  # all ints: checked above
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(
                    f"token id {bad[0]} is outside the vocabulary [0, {self.config.vocab_size})"
                )
            return ids
        raise TypeError(
            "a prompt must be a string, a list of {'role', 'content'} messages, or "
            f"a list of token ids; got {type(prompt).__name__}"
        )

    def _encode_chat(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        """Tokenize a rendered conversation: the template's special-token strings become special
        tokens, while message contents never do (text such as "<|im_end|>" typed by a user stays
        text, so it cannot end a turn or fake one).

        When no content holds special-token text (the usual case) the rendered prompt is
        tokenized in one piece. Otherwise each content is located in the rendered text, in order,
        and tokenized as plain text; a template that altered such a content is refused.
        """
        tok = self.tokenizer
        text = self.render_chat(messages, tools=tools)
        contents = [m["content"] for m in messages]
        risky = [
            c
            for c in contents
            if c
            and tok.encode(c, add_bos=False, parse_special=True)
            != tok.encode(c, add_bos=False, parse_special=False)
        ]
        if not risky:
            return tok.encode(text, add_bos=False, parse_special=True)
        ids: list[int] = []
        cursor = 0
        for i, content in enumerate(contents):
            if not content:
                continue
            at = text.find(content, cursor)
            if at < 0:
                if content in risky:
                    raise ValueError(
                        f"messages[{i}] contains special-token text that the chat "
                        "template does not reproduce verbatim; refusing to tokenize "
                        "it (it could inject control tokens)"
                    )
                continue
            if at > cursor:
                ids += tok.encode(text[cursor:at], add_bos=False, parse_special=True)
            ids += tok.encode(content, add_bos=False, parse_special=False)
            cursor = at + len(content)
        if cursor < len(text):
            ids += tok.encode(text[cursor:], add_bos=False, parse_special=True)
        return ids

    def _fit(self, ids: list[int], room: int, truncate: str | None, what: str) -> list[int]:
        """Apply the context-length policy: `ids` plus `room` tokens must fit the context."""
        if truncate not in TRUNCATE_POLICIES:
            raise ValueError(f"truncate must be None or 'left', got {truncate!r}")
        if not ids:
            raise ValueError(f"the {what} is empty (0 tokens)")
        limit = self.context_length
        if len(ids) + room <= limit:
            return ids
        if truncate == "left":
            keep = max(1, limit - room)
            return ids[len(ids) - keep :]
        extra = f" and {room} more for generation" if room else ""
        raise ContextLengthError(
            f"the {what} has {len(ids)} tokens{extra}, more than the context length of "
            f"{limit} tokens (pass truncate='left' to keep the end of the {what})"
        )

    # ------------------------------------------------------------------ generation

    @property
    def engine(self) -> EngineFrontend:
        """The engine behind generate/stream/chat, made on first use and kept: its KV-cache
        keeps finished requests' blocks as a prefix cache, so a chat's next turn (or prompts
        sharing a system prompt) prefills only what is new.

        It is thread-safe (pyllm/engine/frontend.py): one loop thread steps the engine, and
        generate/stream/chat from any number of threads share its continuous batch. Whatever
        else runs the model (score, embed, the task adapters) holds the engine still meanwhile:
        the model's forward is not reentrant."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from pyllm.engine.frontend import EngineFrontend
                    from pyllm.engine.llm_engine import LLMEngine

                    config = self._engine_config or self.engine_config()
                    self._engine = EngineFrontend(LLMEngine(self.model, self.tokenizer, config))
        return self._engine

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Use the model directly (not through the engine) while no step runs."""
        with self.engine.exclusive():
            yield

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """An EngineConfig for this model's settings (its KV-cache dtype), with `overrides`."""
        from pyllm.engine.llm_engine import EngineConfig

        return EngineConfig(**{"kv_dtype": getattr(torch, self.kv_dtype), **overrides})

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        truncate: str | None = None,
        progress: bool = False,
    ) -> list[GenerationResult]:
        """One GenerationResult per prompt, in input order (a single prompt is a batch of one).

        `params`: one SamplingParams for every prompt or one per prompt (default:
        SamplingParams()); a mapping such as {"temperature": 0} stands for SamplingParams of
        those fields. All prompts run together through the engine (continuous batching).
        Results carry text, token_ids, finish_reason ("stop" | "length") and log-probs when
        params.logprobs is set. `progress=True` shows a progress bar of finished completions.
        """
        batch = _as_batch(prompts)
        plist = self._params_list(params, len(batch))
        ids = [
            self._fit(self.encode_prompt(p, truncate=truncate), 1, truncate, "prompt")
            for p in batch
        ]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(p.n for p in plist), unit="seq", desc="generate")
        try:
            outs = self.engine.run_all(
                ids, plist, progress=(lambda c: bar.update(1)) if bar else None
            )
        finally:
            if bar is not None:
                bar.close()
        return [GenerationResult(i, o) for i, o in zip(ids, outs)]

    def stream_events(
        self, prompt: Prompt, params: SamplingParams | None = None, *, truncate: str | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Events of one request as they happen: text deltas, then a final event whose
        `completion` has the token ids and finish reason. Closing the iterator stops the
        request. Several streams may be consumed concurrently (they share one engine)."""
        params = self._params_list(params, 1)[0]
        ids = self._fit(self.encode_prompt(prompt, truncate=truncate), 1, truncate, "prompt")
        return self.engine.stream(ids, params)

    def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, *, truncate: str | None = None
    ) -> Iterator[str]:
        """Text deltas of one completion as they are generated (stop strings never shown)."""
        params = self._params_list(params, 1)[0]
        if params.n != 1:
            raise ValueError("stream() makes one completion; use generate() for n > 1")
        events = self.stream_events(prompt, params, truncate=truncate)
        try:
            for ev in events:
                if ev.delta:
                    yield ev.delta
        finally:
            events.close()  # a consumer that stops early aborts the request

    def chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        truncate: str | None = None,
    ) -> GenerationResult:
        """The assistant's reply to a conversation (rendered with the model's chat template)."""
        if not is_messages(messages):
            raise ValueError("chat() takes a non-empty list of {'role', 'content'} messages")
        return self.generate([list(messages)], params, truncate=truncate)[0]

    # ------------------------------------------------------------------ scoring

    # ------------------------------------------------------------------ tasks

    def run_task(self, name: str, inputs: Any, **options: Any) -> Any:
        """Run a registered task on this model: ``llm.run_task("classify", "Great match!",
        labels=["sport", "politics"])``. `inputs`: a string (for a task with one input field),
        a record, or a list of them; see :func:`pyllm.tasks.run` and ``pyllm.tasks.names()``."""
        from pyllm import tasks

        with self.exclusive():
            return tasks.run(self, name, inputs, **options)

    def score(
        self, texts: Prompt | Sequence[Prompt], top_n: int = 10, *, truncate: str | None = None
    ) -> list[list[ScoredToken]]:
        """Per text, per position: the token id, its log-prob given what precedes it (None for
        the first token) and the top-n alternatives the model predicted there."""
        if not isinstance(top_n, int) or not 0 <= top_n <= self.config.vocab_size:
            raise ValueError(f"top_n must be an integer in [0, vocab size], got {top_n!r}")
        batch = [
            self._fit(self.encode_prompt(t, truncate=truncate), 0, truncate, "text")
            for t in _as_batch(texts)
        ]
        with self.exclusive():
            return [score_ids(self.model, ids, top_n) for ids in batch]

    def embed(
        self, texts: str | Sequence[str], *, truncate: str | None = None
    ) -> list[list[float]]:
        """One vector per text: the final hidden states (after the last norm) averaged over the
        text's tokens and scaled to unit length.

        A causal language model was not trained for this: the vectors carry some topical
        similarity but are no match for a trained embedding model. They are what
        `/v1/embeddings` and `pyllm embed` return."""
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, Sequence)
            or not texts
            or not all(isinstance(t, str) for t in texts)
        ):
            raise ValueError("embed() takes a string or a non-empty list of strings")
        batch = [
            self._fit(self.encode_prompt(t, truncate=truncate), 0, truncate, "text") for t in texts
        ]
        with self.exclusive():
            return [embed_ids(self.model, ids) for ids in batch]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _params_list(
        params: SamplingParams | Sequence[SamplingParams] | None, n: int
    ) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        if isinstance(params, Mapping):  # {"temperature": 0}: fields of one SamplingParams
            return [SamplingParams.from_mapping(params)] * n
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise TypeError(
                f"params must be a SamplingParams, a mapping of its fields or a list "
                f"of {n} (one per prompt), got {type(params).__name__}"
            )
        plist = [SamplingParams.from_mapping(p) if isinstance(p, Mapping) else p for p in params]
        if len(plist) != n:
            raise ValueError(
                f"params is a list of {len(plist)} but there are {n} prompts: give "
                f"one SamplingParams (or mapping) for all, or one per prompt"
            )
        bad = [i for i, p in enumerate(plist) if not isinstance(p, SamplingParams)]
        if bad:
            raise TypeError(
                f"params[{bad[0]}] must be a SamplingParams or a mapping of its "
                f"fields, got {type(plist[bad[0]]).__name__}"
            )
        return plist

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LLM({self.name!r}, {c.family}, {c.n_layer} layers, n_embd {c.n_embd}, "
            f"context {c.max_position}, device {self.device})"
        )


def _as_batch(prompts: Any) -> list[Prompt]:
    """A single prompt (text, messages, token ids) -> [it]; a list of prompts stays a list."""
    if isinstance(prompts, str) or is_messages(prompts):
        return [prompts]
    if (
        isinstance(prompts, Sequence)
        and prompts
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts)
    ):
        return [prompts]  # one prompt given as token ids
    if isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, Mapping)):
        if not prompts:
            raise ValueError("no prompts given")
        return list(prompts)
    raise TypeError(f"prompts must be a prompt or a list of prompts, got {type(prompts).__name__}")


def _check_device(device: Any) -> None:
    """Refuse a device torch cannot use here with a message saying why (torch's own is a bare
    AssertionError for CUDA on a CPU-only build)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: torch sees no CUDA device here (no NVIDIA GPU or "
            f"driver, or a CPU-only torch build); use device='cpu'"
        )


def _piece(tok: Tokenizer, i: int | None) -> str:
    return "" if i is None else tok.id_to_piece(i)
