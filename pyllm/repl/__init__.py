"""The `pyllm chat` REPL, one job per module.

- backend.py: :class:`ChatBackend`, what the REPL needs from a model; :class:`LLMBackend` adapts
  ``pyllm.api.LLM`` (the REPL's tests use a fake one, tests/fake_backend.py).
- conversation.py: the messages, the system prompt, cut replies, context overflow, JSON files.
- commands.py: the slash-command registry (built-ins by decorator, plugins merged in).
- completion.py, keys.py, toolbar.py: prompt-toolkit pieces (tab completion, key bindings,
  bottom toolbar).
- render.py: streamed plain text, then Markdown with rich; ``NO_COLOR`` honoured.
- session.py: the loop (one ``PromptSession``; Ctrl-C stops a reply, not the program).

Importing this package imports nothing heavy; ``pyllm.repl.session`` pulls in prompt-toolkit and
rich, never torch (the backend does, when a real model is loaded).
"""
