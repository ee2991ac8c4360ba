"""Byte-level BPE pre-tokenizers, chosen by GGUF's ``tokenizer.ggml.pre``.

Each model family splits text into words with its own regular expression before BPE runs on each
word; getting it wrong changes the ids. The patterns below are the ones the families' upstream
tokenizers use (and llama.cpp reproduces):

- ``gpt2`` (``gpt-2``): GPT-2's pattern (contractions, optional space + letters, optional
  space + digits, optional space + other symbols, whitespace runs).
- ``default`` (what llama.cpp uses when a byte-level GGUF names no pre-tokenizer): runs of
  punctuation and ``$+<=>^~|`` split off first, then GPT-2's pattern, then digit runs, then
  groups of three ASCII digits; each pattern splits the pieces the previous one left.
- ``llama3`` (``llama-bpe``, ``llama-v3``): case-insensitive contractions, letters with one
  leading non-letter, digits in groups of at most three, symbols with trailing newlines,
  newline runs.
- ``smollm``: every digit split off first, then GPT-2's pattern (so ``"12345"`` is five words).
- ``qwen2``: the Llama 3 pattern with single digits.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenizers import Regex, pre_tokenizers

from pyllm.errors import ModelFormatError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CONTRACTIONS = r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"""
LLAMA3_PATTERN = (
    CONTRACTIONS
    + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    CONTRACTIONS
    + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


def _bytes_only() -> pre_tokenizers.PreTokenizer:
    # Map the words to the byte-level alphabet; the splitting was done by the patterns before.
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([_split(GPT2_PATTERN), _bytes_only()])


def _default() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            _split(r"[\p{P}\$\+<=>\^~\|]+"),
            _split(GPT2_PATTERN),
            _split(r"\p{N}+"),
            _split(r"[0-9][0-9][0-9]"),
            _bytes_only(),
        ]
    )


def _smollm() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([_split(r"\p{N}"), _split(GPT2_PATTERN), _bytes_only()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([_split(LLAMA3_PATTERN), _bytes_only()])


def _qwen2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([_split(QWEN2_PATTERN), _bytes_only()])


# name in tokenizer.ggml.pre -> (builder, whether BPE may take a whole word found in the vocab
# before merging: Llama 3's tokenizer does, the others always merge)
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "default": (_default, False),
    "gpt2": (_gpt2, False),
    "gpt-2": (_gpt2, False),
    "smollm": (_smollm, False),
    "llama3": (_llama3, True),
    "llama-v3": (_llama3, True),
    "llama-bpe": (_llama3, True),
    "qwen2": (_qwen2, False),
}


def pre_tokenizer_for(name: str | None) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """(pre-tokenizer, ignore_merges) for a ``tokenizer.ggml.pre`` value (None means default).

    Raises ModelFormatError naming the value and the supported names for an unknown one: a
    guess would silently give the model ids it was never trained on.
    """
    key = "default" if name is None else str(name)
    if key not in PRE_TOKENIZERS:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise ModelFormatError(
            f"tokenizer.ggml.pre: unknown pre-tokenizer {key!r} (supported: {known})"
        )
    build, ignore_merges = PRE_TOKENIZERS[key]
    return build(), ignore_merges
