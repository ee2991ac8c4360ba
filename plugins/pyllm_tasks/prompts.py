"""How the task adapters talk to a model: prompt styles per model family, and batched generation.

Two styles:

- ``chat``: the model ships a chat template (SmolLM2-Instruct, Llama-2/3-chat, Qwen2-Instruct,
  Mistral-Instruct...). The task is a system instruction plus a user turn; the answer is the
  assistant's turn, which ends with the template's end-of-turn token.
- ``plain``: a base model without a template (GPT-2 and other plain LMs) sees a completion
  prompt (``Text: ...\\nLabel:``) and its answer ends at a newline.

Family rules: GPT-2 is always ``plain`` (its checkpoints are base models); templates that refuse
a ``system`` turn (Mistral's and Gemma's raise an exception) get the instruction folded into the
first user turn. Everything else follows whether the model has a template of its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from pyllm.types import Message

PLAIN_FAMILIES = frozenset({"gpt2"})


def prompt_style(llm: Any) -> str:
    """ "chat" or "plain" for a loaded `pyllm.LLM` (see the module docstring)."""
    family = getattr(getattr(llm, "config", None), "family", "")
    if family in PLAIN_FAMILIES:
        return "plain"
    template = getattr(llm, "chat_template", None)
    return "plain" if template is None or getattr(template, "is_fallback", False) else "chat"


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """The system instruction moved to the start of the first user turn."""
    msgs = [m.copy() for m in messages]
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        for m in msgs:
            if m["role"] == "user":
                m["content"] = f"{system}\n\n{m['content']}"
                break
    return msgs


def render(llm: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The chat template's text for `messages`; a template that refuses the system turn gets
    it folded into the first user turn."""
    from pyllm.chat import ChatTemplateError

    try:
        return llm.render_chat(list(messages), add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:
        if not messages or messages[0]["role"] != "system":
            raise
        return llm.render_chat(fold_system(messages), add_generation_prompt=add_generation_prompt)


def chat_ids(llm: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of a conversation ending with the assistant's generation prompt."""
    return llm.tokenizer.encode(render(llm, messages), add_bos=False, parse_special=True)


def plain_ids(llm: Any, text: str) -> list[int]:
    """Token ids of a completion prompt (the tokenizer's BOS default)."""
    return llm.tokenizer.encode(text)


def answer_continuation(llm: Any, prompt_messages: Sequence[Message], answer: str) -> list[int]:
    """The tokens an assistant turn `answer` adds after the generation prompt, up to and
    including the template's end-of-turn token (so a label is scored as a complete answer).

    The conversation is rendered with and without the answer and the extra tokens kept, so the
    boundary is tokenized as the template writes it; when the two tokenizations do not share
    the prompt as a prefix, the answer is tokenized alone and the end-of-turn id appended.
    """
    tok = llm.tokenizer
    prompt = chat_ids(llm, prompt_messages)
    full_text = render(
        llm,
        [*prompt_messages, {"role": "assistant", "content": answer}],
        add_generation_prompt=False,
    )
    full = tok.encode(full_text, add_bos=False, parse_special=True)
    ends = set(tok.eos_ids)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        cont = full[len(prompt) :]
        for i, t in enumerate(cont):
            if t in ends and i > 0:
                return cont[: i + 1]
        return cont
    cont = tok.encode(answer, add_bos=False)
    end = tok.eos_id if tok.eos_id is not None else (min(ends) if ends else None)
    return cont + ([end] if end is not None else [])


def plain_continuation(llm: Any, prompt_text: str, answer: str) -> list[int]:
    """Tokens of `answer` (with its leading space) then a newline after a completion prompt,
    tokenized in context the same way (prompt + answer, minus the prompt's tokens)."""
    tok = llm.tokenizer
    prompt = tok.encode(prompt_text)
    full = tok.encode(prompt_text + answer + "\n")
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        return full[len(prompt) :]
    return tok.encode(answer + "\n", add_bos=False)


# ---------------------------------------------------------------------- generation


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_for(llm: Any) -> Any:
    """One engine per loaded model, kept while the model lives: its prefix cache lets batches
    of a JSONL job (and REPL calls) share the task's system prompt."""
    engine = _ENGINES.get(llm)
    if engine is None:
        from pyllm.engine.llm_engine import EngineConfig, LLMEngine

        engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(max_num_seqs=32))
        _ENGINES[llm] = engine
    return engine


def generate(
    llm: Any,
    prompts: Sequence[list[int]],
    max_tokens: Sequence[int] | int,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy completions of token-id prompts through the engine's continuous batching."""
    from pyllm.engine.frontend import EngineFrontend
    from pyllm.sampling_params import SamplingParams

    if isinstance(max_tokens, int):
        max_tokens = [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=m, stop=tuple(stop)) for m in max_tokens]
    engine = engine_for(llm)
    for p, sp in zip(prompts, params):
        engine.check_request(list(p), sp)
    results = EngineFrontend(engine).run_all([list(p) for p in prompts], params)
    return [r[0].text for r in results]
