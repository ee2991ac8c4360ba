"""Translation between named languages.

Languages are given as ISO 639-1 codes (``fr``) or English names (``French``). A long text is
split at sentence boundaries into pieces of at most `max_chunk_tokens` tokens (never across a
line break), each piece is translated on its own (all pieces of all texts in one engine batch)
and the translations are put back with the original spacing and line breaks. A piece never holds
a line break, so its translation ends at the first one (small models otherwise go on with
"Translation: ..." and the like).

Prompts by style (see :mod:`pyllm_tasks.prompts`): a chat model gets a translator system turn
and the text in a user turn that asks for the translation only; a base model gets
``English: <text>\\nFrench:`` and its answer ends at the newline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyllm.types import Message
from pyllm_tasks import prompts as P
from pyllm_tasks.sentences import chunk_sentences, split_sentences

LANGUAGES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "sv": "Swedish",
    "sw": "Swahili",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "vi": "Vietnamese",
    "zh": "Chinese",
}
_BY_NAME = {name.lower(): name for name in LANGUAGES.values()}

SYSTEM = "You are a professional translator."


def language_name(spec: str | None) -> str | None:
    """English name for a code or name (None / "auto" stays None: the source is not named).
    A short unknown code is refused; a longer unknown word is taken as a language name."""
    if spec is None or spec.strip().lower() in ("", "auto"):
        return None
    s = spec.strip()
    low = s.lower().replace("_", "-")
    if low in LANGUAGES:
        return LANGUAGES[low]
    if low.split("-")[0] in LANGUAGES and len(low.split("-")[0]) == 2:  # fr-CA, pt-BR
        return LANGUAGES[low.split("-")[0]]
    if low in _BY_NAME:
        return _BY_NAME[low]
    if len(low) <= 3:
        raise ValueError(
            f"unknown language code {spec!r}; use a name or one of {', '.join(sorted(LANGUAGES))}"
        )
    return s[:1].upper() + s[1:]


class TranslateTask:
    """The `translate` task adapter (see the module docstring)."""

    name = "translate"
    description = "Translate text between languages (sentence-split, rejoined)."
    input_fields = ("text",)

    def prompt_ids(
        self, llm: Any, text: str, src: str | None, tgt: str
    ) -> tuple[list[int], tuple[str, ...]]:
        """Token ids of the prompt for one piece, and the stop strings its answer needs."""
        if P.prompt_style(llm) == "chat":
            source = f"this {src} text" if src else "this text"
            msgs: list[Message] = [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": f"Translate {source} into {tgt}. Reply with "
                    f"the {tgt} translation only.\n\n{text}",
                },
            ]
            return P.chat_ids(llm, msgs), ("\n",)  # a piece is one line: so is its translation
        label = src or "Text"
        return P.plain_ids(llm, f"{label}: {text}\n{tgt}:"), ("\n",)

    def run(
        self,
        llm: Any,
        records: Sequence[Mapping[str, Any]],
        *,
        src: str | None = None,
        tgt: str,
        max_chunk_tokens: int = 200,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Translate each record's ``text``: ``{"translation"}``."""
        src_name, tgt_name = language_name(src), language_name(tgt)
        if tgt_name is None:
            raise ValueError("give the target language (--to)")
        if max_chunk_tokens < 1:
            raise ValueError(f"max_chunk_tokens must be >= 1, got {max_chunk_tokens}")
        tok = llm.tokenizer

        def count(s: str) -> int:
            return len(tok.encode(s, add_bos=False))

        layouts: list[list[tuple[str, str]]] = []
        prompts: list[list[int]] = []
        budgets: list[int] = []
        stop: tuple[str, ...] = ()
        for rec in records:
            text = rec.get("text") if isinstance(rec, Mapping) else None
            if not isinstance(text, str):
                raise ValueError('a record needs a string "text"')
            pieces = chunk_sentences(split_sentences(text), count, max_chunk_tokens)
            layouts.append(pieces)
            for piece, _ in pieces:
                if piece.strip():
                    ids, stop = self.prompt_ids(llm, piece, src_name, tgt_name)
                    prompts.append(ids)
                    budgets.append(max_tokens or 2 * count(piece) + 16)
        outs = iter(P.generate(llm, prompts, budgets, stop) if prompts else [])
        results = []
        for pieces in layouts:
            text = "".join((next(outs).strip() if p.strip() else p) + sep for p, sep in pieces)
            results.append({"translation": text})
        return results
