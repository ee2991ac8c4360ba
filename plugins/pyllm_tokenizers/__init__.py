"""Built-in pyllm plugin: tokenizers."""
