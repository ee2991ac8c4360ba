"""Built-in pyllm plugin: samplers."""
