"""A tiny random-weight Llama that can chat: the tiny shape of scripts/make_random_llama.py with
SmolLM2's vocabulary, tokenizer and chat template copied from the default model's GGUF. Its
replies are noise, but it loads through `pyllm.load` like a real model and runs in milliseconds,
which is what tests of the machinery around the model (threads, the HTTP server) need."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import gguf_builder as B
import make_random_llama as M

_NUMPY_TYPES = {np.dtype(np.int32): B.INT32, np.dtype(np.float32): B.FLOAT32,
                np.dtype(np.uint32): B.UINT32, np.dtype(np.int64): B.INT64}


def _tokenizer_kvs(real_gguf: Path) -> list[dict]:
    """The real model's tokenizer.* key/value pairs in make_random_llama's --metadata form."""
    from pyllm.weights.gguf import load_gguf

    g = load_gguf(real_gguf)
    items = []
    for key, value in g.metadata.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = g.value_types[key]
        if vtype == B.ARRAY:
            if isinstance(value, np.ndarray):
                items.append({"key": key, "types": [B.ARRAY, _NUMPY_TYPES[value.dtype]],
                              "value": value.tolist()})
            else:
                items.append({"key": key, "types": [B.ARRAY, B.STRING], "value": list(value)})
        else:
            items.append({"key": key, "types": [vtype], "value": value})
    return items


def write_tiny_chat_model(path: Path, real_gguf: Path, *, seed: int = 3,
                          context: int = 512) -> Path:
    shape = dict(M.SHAPES["tiny"], vocab=49152, context=context)
    M.write_random_llama(path, shape, seed=seed, metadata=_tokenizer_kvs(real_gguf),
                         scale=0.15, embed_scale=0.5)
    return path
