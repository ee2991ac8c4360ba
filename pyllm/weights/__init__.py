"""Model weights: GGUF and safetensors readers, block formats, model sources and the cache."""
