"""Question answering from a given context.

Free answers go through the model's chat template (a system turn asking for a short answer from
the context, the context and question in a user turn) and the engine's batching, greedy.
``extractive=True`` constrains decoding to a span of the context (:mod:`pyllm_tasks.extractive`)
and returns its character offsets: ``{"answer", "start", "end"}`` with
``context[start:end] == answer``.

A base model (no template) gets ``Context: ...\\n\\nQuestion: ...\\nAnswer:`` and its answer ends
at the newline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyllm.types import Message
from pyllm_tasks import prompts as P

SYSTEM = (
    "You answer questions using only the given context. Give a short answer, without explanation."
)
SYSTEM_EXTRACTIVE = (
    "You answer questions by copying the shortest phrase from the context that "
    "answers the question."
)


class QATask:
    """The `qa` task adapter (see the module docstring)."""

    name = "qa"
    description = "Answer a question from a context (free, or an extracted span with offsets)."
    input_fields = ("context", "question")

    def prompt_ids(
        self, llm: Any, context: str, question: str, extractive: bool
    ) -> tuple[list[int], tuple[str, ...]]:
        if P.prompt_style(llm) == "chat":
            msgs: list[Message] = [
                {"role": "system", "content": SYSTEM_EXTRACTIVE if extractive else SYSTEM},
                {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
            ]
            return P.chat_ids(llm, msgs), ()
        return P.plain_ids(llm, f"Context: {context}\n\nQuestion: {question}\nAnswer:"), ("\n",)

    def run(
        self,
        llm: Any,
        records: Sequence[Mapping[str, Any]],
        *,
        extractive: bool = False,
        max_tokens: int = 64,
    ) -> list[dict[str, Any]]:
        """Answer each record's ``question`` from its ``context``."""
        pairs = []
        for rec in records:
            ctx = rec.get("context") if isinstance(rec, Mapping) else None
            q = rec.get("question") if isinstance(rec, Mapping) else None
            if not isinstance(ctx, str) or not isinstance(q, str):
                raise ValueError('a record needs string "context" and "question"')
            if not q.strip():
                raise ValueError("the question is empty")
            pairs.append((ctx, q))
        if not pairs:
            return []
        built = [self.prompt_ids(llm, c, q, extractive) for c, q in pairs]
        if extractive:
            from pyllm_tasks.extractive import decode_spans

            spans = decode_spans(llm, [ids for ids, _ in built], [c for c, _ in pairs], max_tokens)
            return [
                {"answer": s.text, "start": s.start, "end": s.end, "logprob": round(s.logprob, 4)}
                for s in spans
            ]
        texts = P.generate(llm, [ids for ids, _ in built], max_tokens, built[0][1])
        return [{"answer": t.strip()} for t in texts]
