"""Built-in pyllm plugin: sources."""
