"""Text embeddings from a causal language model: mean-pooled, L2-normalised final hidden states.

The model runs once over the text (a contiguous KV-cache of its own, as scoring does); the
final-layer states after the last norm are averaged over the tokens and scaled to unit length,
so the dot product of two embeddings is their cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pyllm.model.batch import ContiguousKVCache

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.runtime import ModelRunner


def embed_ids(model: ModelRunner, ids: Sequence[int]) -> list[float]:
    """The unit-length mean of the final normed hidden states of `ids` (one non-empty sequence
    within the context length)."""
    if not ids:
        raise ValueError("cannot embed an empty text (0 tokens)")
    cfg = model.config
    cache = ContiguousKVCache(
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, len(ids), device=model.device
    )
    with torch.inference_mode():
        x = torch.tensor(list(ids), dtype=torch.int64, device=model.device)
        hidden = model.hidden_states(x, cache.metadata([0], [0], [len(ids)]), cache.kv_caches)
        pooled = model.final_norm(hidden).float().mean(dim=0)
        return torch.nn.functional.normalize(pooled, dim=0).tolist()
