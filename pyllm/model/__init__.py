"""The GPT model: config (one ModelConfig for every family), layers, the model, batch metadata,
and the loader for GGUF files and Hugging Face folders."""

from pyllm.model.batch import AttentionMetadata, ContiguousKVCache, build_metadata
from pyllm.model.config import ModelConfig

__all__ = ["AttentionMetadata", "ContiguousKVCache", "ModelConfig", "build_metadata"]
