"""Built-in pyllm plugin: tokenizers.

Registers four tokenizer kinds; each factory imports its implementation (and the `tokenizers` /
`sentencepiece` libraries) only when a tokenizer is built, so loading this plugin is cheap.

- ``gpt2``: byte-level BPE from GGUF ``tokenizer.ggml.*`` (pre-tokenizer by ``tokenizer.ggml.pre``)
- ``llama``: SentencePiece BPE from a GGUF llama vocabulary (scores, token types, byte fallback)
- ``hf-json``: a Hugging Face ``tokenizer.json``
- ``sentencepiece``: a SentencePiece ``.model`` file
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyllm.hookspecs import RegisterTokenizer, hookimpl


def gpt2(metadata: Mapping[str, Any], path: Path | None = None) -> Any:
    from .bpe import from_gguf

    return from_gguf(metadata, path)


def llama(metadata: Mapping[str, Any], path: Path | None = None) -> Any:
    from .spm import from_gguf

    return from_gguf(metadata, path)


def hf_json(metadata: Mapping[str, Any], path: Path | None = None) -> Any:
    from .bpe import from_tokenizer_json

    return from_tokenizer_json(metadata, path)


def sentencepiece(metadata: Mapping[str, Any], path: Path | None = None) -> Any:
    from .spm import from_model_file

    return from_model_file(metadata, path)


@hookimpl
def register_tokenizers(register: RegisterTokenizer) -> None:
    register("gpt2", gpt2)
    register("llama", llama)
    register("hf-json", hf_json)
    register("sentencepiece", sentencepiece)
