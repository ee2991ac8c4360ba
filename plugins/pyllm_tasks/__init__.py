"""Built-in pyllm plugin: tasks.

Registers three task adapters through ``register_tasks`` — ``classify`` (label scoring with
contextual calibration), ``qa`` (answers from a context, optionally an extracted span) and
``translate``. Every task gets ``pyllm <task>`` and ``/<task>`` from pyllm; these three replace
the generic ones with their own (``register_commands``: ``classify_cmd.py``, ``qa_cmd.py``,
``translate_cmd.py``; ``register_repl_commands``: ``repl.py``), as any plugin's task may.
Importing this package is cheap: the adapters load torch and the model code only when they run.
"""

from __future__ import annotations

from pyllm.hookspecs import RegisterCommand, RegisterReplCommand, RegisterTask, hookimpl


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    from pyllm_tasks.classify import ClassifyTask
    from pyllm_tasks.qa import QATask
    from pyllm_tasks.translate import TranslateTask

    for adapter in (ClassifyTask(), QATask(), TranslateTask()):
        # Each run() names its own options where TaskAdapter's takes **options.
        register(adapter.name, adapter)  # type: ignore[arg-type]  # run(*, labels=...) etc.


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    from pyllm_tasks.classify_cmd import classify
    from pyllm_tasks.qa_cmd import qa
    from pyllm_tasks.translate_cmd import translate

    for command in (classify, qa, translate):
        register(command)


@hookimpl
def register_repl_commands(register: RegisterReplCommand) -> None:
    from pyllm_tasks import repl

    register("classify", repl.classify, repl.CLASSIFY_HELP)
    register("qa", repl.qa, repl.QA_HELP)
    register("translate", repl.translate, repl.TRANSLATE_HELP, aliases=("tr",))
