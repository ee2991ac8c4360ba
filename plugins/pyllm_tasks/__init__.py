"""Built-in pyllm plugin: tasks."""
