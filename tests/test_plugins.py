"""The plugin manager: registries, pluggy's call order and wrappers, isolation of broken plugins,
validation of what plugins register, PYLLM_PLUGINS, laziness."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from pyllm import plugins
from pyllm.hookspecs import hookimpl
from pyllm.plugins import PluginHost, ReplCommand

BUILTINS = {"tokenizers", "samplers", "tasks", "sources"}


class StepPlugin:
    """A plugin object as a test writes one: hook methods on a class."""

    def __init__(self) -> None:
        self.step = lambda logits, context: logits

    @hookimpl
    def register_samplers(self, register):
        register("test_identity", self.step)

    @hookimpl
    def register_repl_commands(self, register):
        register("/ping", lambda session, arg: "pong", "Reply pong.", aliases=("/p",))

    @hookimpl
    def register_commands(self, register):
        @click.command(name="test-cmd")
        def cmd() -> None:
            """A test command."""

        register(cmd)


class Task:
    """The smallest TaskAdapter."""

    description = "a test task"
    input_fields = ("text",)

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, llm, records, **options):
        return [{"out": r["text"]} for r in records]


class RaisingPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("half_registered", lambda logits, context: logits)
        raise RuntimeError("boom in samplers")

    @hookimpl
    def register_tasks(self, register):
        register("fine_task", Task("fine_task"))


class ShadowingPlugin:
    @hookimpl
    def register_tokenizers(self, register):
        register("gpt2", lambda metadata, path: None)
        register("shadow-extra", lambda metadata, path: None)


class BadArgsPlugin:
    @hookimpl
    def register_samplers(self, register):
        register(42, "not callable")


@pytest.fixture
def host() -> PluginHost:
    """A host with only the built-in plugins (whatever else is installed stays out)."""
    return PluginHost({"builtin"})


def test_builtins_register_through_entry_points(host: PluginHost) -> None:
    report = {row["name"]: row for row in host.report()}
    assert BUILTINS <= set(report)
    for name in BUILTINS:
        assert report[name]["distribution"] == "pyllm"
        assert report[name]["builtin"] is True
        assert report[name]["error"] is None
    assert {"gpt2", "llama", "hf-json", "sentencepiece"} <= set(host.registry("tokenizers"))
    assert report["tokenizers"]["registered"]["tokenizers"] == list(host.registry("tokenizers"))


def test_registered_context_manager_adds_and_removes(host: PluginHost) -> None:
    plugin = StepPlugin()
    with host.registered(plugin, name="step-plugin") as name:
        assert name == "step-plugin"
        assert host.registry("samplers")["test_identity"] is plugin.step
        assert "test-cmd" in host.registry("commands")
        rc = host.registry("repl_commands")["ping"]
        assert isinstance(rc, ReplCommand)
        assert (rc.aliases, rc.plugin, rc.help) == (("p",), "step-plugin", "Reply pong.")
        row = next(r for r in host.report() if r["name"] == "step-plugin")
        assert row["registered"] == {"samplers": ["test_identity"], "commands": ["test-cmd"],
                                     "repl_commands": ["ping"]}
    assert "test_identity" not in host.registry("samplers")
    assert all(r["name"] != "step-plugin" for r in host.report())


def test_module_level_registered_uses_the_process_host() -> None:
    with plugins.registered(StepPlugin(), name="step-plugin"):
        assert "test_identity" in plugins.samplers()
        assert "ping" in plugins.repl_commands()
    assert "test_identity" not in plugins.samplers()


def test_raising_hook_is_reported_once_and_skipped(host: PluginHost, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyllm.plugins")
    with host.registered(RaisingPlugin(), name="raiser"):
        samplers = host.registry("samplers")
        assert "half_registered" not in samplers  # a failing call registers nothing
        assert "fine_task" in host.registry("tasks")  # its other hooks still count
        assert "gpt2" in host.registry("tokenizers")  # and the other plugins are unaffected
        for _ in range(3):  # rebuilding the registries does not repeat the warning
            host.invalidate()
            host.registry("samplers")
        row = next(r for r in host.report() if r["name"] == "raiser")
        assert "boom in samplers" in row["error"]
        assert row["registered"] == {"tasks": ["fine_task"]}
    warnings = [r.getMessage() for r in caplog.records if "raiser" in r.getMessage()]
    assert len(warnings) == 1
    assert "register_samplers" in warnings[0] and "boom in samplers" in warnings[0]


def test_bad_register_call_is_a_hook_failure(host: PluginHost) -> None:
    class WrongArity:
        @hookimpl
        def register_samplers(self, register):
            register("only-a-name")

    with host.registered(WrongArity(), name="wrong-arity"):
        assert "only-a-name" not in host.registry("samplers")
        row = next(r for r in host.report() if r["name"] == "wrong-arity")
        assert "TypeError" in row["error"] and "register_samplers" in row["error"]
        assert "'only-a-name'" in row["error"]


class InvalidPlugin:
    """Registrations that do not satisfy the protocols in pyllm.types, beside valid ones."""

    @hookimpl(tryfirst=True)
    def register_tasks(self, register):
        register("classify", object())  # would displace the built-in task
        register("kw", object())
        register("renamed", Task("other-name"))
        register("good_task", Task("good_task"))

    @hookimpl
    def register_samplers(self, register):
        register(42, lambda logits, context: logits)
        register("not_callable", "a string")

    @hookimpl
    def register_model_sources(self, register):
        register("half_a_source", Task("half_a_source"))

    @hookimpl
    def register_commands(self, register):
        register(click.Command("run", callback=lambda: None))
        register(click.Command("fine-cmd", callback=lambda: None))


class ValidKw:
    @hookimpl
    def register_tasks(self, register):
        register("kw", Task("kw"))


def test_invalid_registrations_are_refused_with_the_plugin_named(host: PluginHost,
                                                                  caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyllm.plugins")
    with host.registered(ValidKw(), name="valid"), host.registered(InvalidPlugin(), name="bad"):
        tasks = host.registry("tasks")
        assert tasks["classify"].__class__.__name__ == "ClassifyTask"
        assert isinstance(tasks["kw"], Task)  # the refused object() does not displace it
        assert "renamed" not in tasks and "good_task" in tasks
        assert set(host.registry("samplers")).isdisjoint({"42", 42, "not_callable"})
        assert "half_a_source" not in host.registry("model_sources")
        assert set(host.registry("commands")) == {"fine-cmd", "classify", "qa", "translate"}
        row = next(r for r in host.report() if r["name"] == "bad")
        assert row["registered"] == {"tasks": ["good_task"], "commands": ["fine-cmd"]}
        refused = {(r["kind"], r["name"]): r["reason"] for r in row["refused"]}
        assert set(refused) == {("tasks", "classify"), ("tasks", "kw"), ("tasks", "renamed"),
                                ("samplers", "42"), ("samplers", "not_callable"),
                                ("model_sources", "half_a_source"), ("commands", "run")}
        assert "not a TaskAdapter" in refused[("tasks", "kw")]
        assert "description" in refused[("tasks", "kw")]
        assert "'other-name'" in refused[("tasks", "renamed")]
        assert "built-in command" in refused[("commands", "run")]
        assert "not a ModelSource" in refused[("model_sources", "half_a_source")]
        assert row["error"] is None  # refusals are not hook failures
    messages = [r.getMessage() for r in caplog.records]
    for kind, name in [("task", "kw"), ("command", "run"), ("sampler", "not_callable")]:
        assert any(m.startswith(f"plugin 'bad': {kind} '{name}' refused") for m in messages)


def test_pyllm_plugins_shows_refusals() -> None:
    from pyllm.cli.main import cli

    with plugins.registered(InvalidPlugin(), name="bad"):
        table = CliRunner().invoke(cli, ["plugins"], catch_exceptions=False).output
        rows = json.loads(CliRunner().invoke(cli, ["plugins", "--json"],
                                             catch_exceptions=False).stdout)
    section = table[table.index("bad:"):]
    assert "  commands: fine-cmd" in section
    assert "  refused commands: run (a built-in command has that name)" in section
    bad = next(r for r in rows if r["name"] == "bad")
    assert bad["registered"]["commands"] == ["fine-cmd"]
    assert {"kind": "commands", "name": "run",
            "reason": "a built-in command has that name"} in bad["refused"]


def test_first_registration_wins(host: PluginHost, caplog) -> None:
    builtin_gpt2 = host.registry("tokenizers")["gpt2"]
    with host.registered(ShadowingPlugin(), name="shadow"):
        tokenizers = host.registry("tokenizers")
        assert tokenizers["gpt2"] is builtin_gpt2
        assert "shadow-extra" in tokenizers
    assert any("'gpt2'" in r.getMessage() and "shadow" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (None, BUILTINS),
        ({"builtin"}, BUILTINS),
        ({"tokenizers"}, {"tokenizers"}),
        ({"pyllm"}, BUILTINS),  # a distribution name selects all its entry points
        (set(), set()),
    ],
)
def test_selection(selection, expected) -> None:
    host = PluginHost(selection)
    loaded = {name for name, _ in host.pm.list_name_plugin()}
    assert expected <= loaded
    if selection is not None:
        assert loaded == expected


def test_selection_of_missing_plugin_warns(caplog) -> None:
    host = PluginHost({"builtin", "no-such-plugin"})
    host.registry("tokenizers")
    assert any("no-such-plugin" in r.getMessage() for r in caplog.records)


def test_no_plugins_means_empty_registries() -> None:
    host = PluginHost(set())
    assert host.registry("tokenizers") == {}
    assert host.report() == []


def test_env_var_is_read_by_the_process_host(monkeypatch) -> None:
    monkeypatch.setenv("PYLLM_PLUGINS", " tokenizers , ")
    plugins.reset()
    try:
        assert [r["name"] for r in plugins.plugin_report()] == ["tokenizers"]
        assert plugins.samplers() == {}
    finally:
        monkeypatch.delenv("PYLLM_PLUGINS")
        plugins.reset()


def test_unknown_registry_kind(host: PluginHost) -> None:
    with pytest.raises(ValueError, match="widgets"):
        host.registry("widgets")


def test_nothing_is_imported_until_a_registry_is_asked_for() -> None:
    code = (
        "import sys, pyllm.plugins as p\n"
        "h = p.get_host()\n"
        "print('pyllm_tokenizers' in sys.modules, 'torch' in sys.modules)\n"
        "p.tokenizers()\n"
        "print('pyllm_tokenizers' in sys.modules, 'pyllm_tokenizers.bpe' in sys.modules,"
        " 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "False", "False"]


# -- pluggy's call order and wrappers -------------------------------------------------------------


def clash_plugin(tag: str, **marks):
    """A plugin registering the sampler name "clash" (and one name of its own), with hookimpl
    options such as tryfirst=True."""

    class Clash:
        @hookimpl(**marks)
        def register_samplers(self, register):
            register("clash", Step(tag))
            register(f"own_{tag}", Step(tag))

    return Clash()


class Step:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self, logits, context):
        return logits


@pytest.mark.parametrize("order", [("first", "normal", "last"), ("last", "normal", "first"),
                                   ("normal", "last", "first")])
def test_tryfirst_beats_normal_beats_trylast_on_a_clash(host: PluginHost, order) -> None:
    marks = {"first": {"tryfirst": True}, "normal": {}, "last": {"trylast": True}}
    names = []
    for tag in order:  # registration order must not matter
        names.append(host.register(clash_plugin(tag, **marks[tag]), name=f"p-{tag}"))
    samplers = host.registry("samplers")
    assert samplers["clash"].tag == "first"
    assert {"own_first", "own_normal", "own_last"} <= set(samplers)
    for name in names:
        host.unregister(name)
    host.register(clash_plugin("normal"), name="p-normal")
    host.register(clash_plugin("last", trylast=True), name="p-last")
    assert host.registry("samplers")["clash"].tag == "normal"


def test_builtins_win_even_over_tryfirst(host: PluginHost) -> None:
    class Hijack:
        @hookimpl(tryfirst=True)
        def register_tokenizers(self, register):
            register("gpt2", lambda metadata, path: None)

    builtin = host.registry("tokenizers")["gpt2"]
    with host.registered(Hijack(), name="hijack"):
        assert host.registry("tokenizers")["gpt2"] is builtin
        row = next(r for r in host.report() if r["name"] == "hijack")
        assert row["refused"][0]["reason"] == "already registered by 'tokenizers'"


class NewWrapper:
    @hookimpl(wrapper=True)
    def register_samplers(self, register):
        register("clash", Step("wrapper-before"))
        result = yield
        register("wrapped_after", Step("wrapper-after"))
        return result


class OldWrapper:
    @hookimpl(hookwrapper=True)
    def register_samplers(self, register):
        register("old_before", Step("old"))
        yield
        register("clash", Step("old-after"))


def test_wrappers_run_around_every_plugin(host: PluginHost) -> None:
    host.register(clash_plugin("first", tryfirst=True), name="p-first")
    host.register(NewWrapper(), name="new-wrapper")
    host.register(OldWrapper(), name="old-wrapper")
    samplers = host.registry("samplers")
    # a wrapper's code before `yield` runs before every plain implementation, even tryfirst
    assert samplers["clash"].tag == "wrapper-before"
    assert samplers["wrapped_after"].tag == "wrapper-after"
    assert samplers["old_before"].tag == "old"
    rows = {r["name"]: r for r in host.report()}
    assert rows["new-wrapper"]["registered"] == {"samplers": ["clash", "wrapped_after"]}
    assert rows["old-wrapper"]["registered"] == {"samplers": ["old_before"]}
    assert rows["p-first"]["refused"][0]["reason"] == "already registered by 'new-wrapper'"


class RaisingWrapper:
    @hookimpl(wrapper=True)
    def register_samplers(self, register):
        register("from_raising_wrapper", Step("x"))
        yield
        raise RuntimeError("wrapper teardown fails")


class NotYielding:
    @hookimpl(wrapper=True)
    def register_samplers(self, register):
        register("never", Step("x"))
        return  # a wrapper that returns before its yield: pluggy raises at call time
        yield


@pytest.mark.parametrize("broken", [RaisingWrapper, NotYielding, RaisingPlugin])
def test_a_failing_plugin_or_wrapper_is_isolated(host: PluginHost, broken, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyllm.plugins")
    host.register(clash_plugin("normal"), name="p-normal")
    host.register(NewWrapper(), name="good-wrapper")
    host.register(broken(), name="broken")
    samplers = host.registry("samplers")
    assert {"own_normal", "clash", "wrapped_after", "top_k"} <= set(samplers)
    assert not {"from_raising_wrapper", "never", "half_registered"} & set(samplers)
    row = next(r for r in host.report() if r["name"] == "broken")
    assert row["error"].startswith("register_samplers: ")
    assert "samplers" not in row["registered"]
    warnings = [r.getMessage() for r in caplog.records if "'broken'" in r.getMessage()]
    assert len(warnings) == 1 and "raised in register_samplers" in warnings[0]


def test_register_kept_past_the_hook_call_fails_clearly(host: PluginHost) -> None:
    kept = []

    class Keeper:
        @hookimpl
        def register_samplers(self, register):
            kept.append(register)

    with host.registered(Keeper(), name="keeper"):
        host.registry("samplers")
        with pytest.raises(RuntimeError, match="after the hook returned"):
            kept[0]("late", Step("late"))


def test_two_instances_of_one_plugin_class_are_told_apart(host: PluginHost) -> None:
    host.register(clash_plugin("a"), name="a")
    plugin_b = host.pm.get_plugin("a").__class__()
    host.register(plugin_b, name="b")
    rows = {r["name"]: r for r in host.report()}
    # the same method registers the same names for both; b, registered last, is asked first
    assert rows["b"]["registered"]["samplers"] == ["clash", "own_a"]
    assert "samplers" not in rows["a"]["registered"]
    assert [r["reason"] for r in rows["a"]["refused"]] == ["already registered by 'b'"] * 2


def test_a_constraint_kind_must_be_callable(host: PluginHost) -> None:
    class Kinds:
        @hookimpl
        def register_constraints(self, register):
            register("yes_no", lambda spec: 'start: "yes" | "no"')
            register("not_a_kind", 'start: "x"')

    with host.registered(Kinds(), name="kinds"):
        kinds = host.registry("constraints")
        assert "yes_no" in kinds and "not_a_kind" not in kinds
        row = next(r for r in host.report() if r["name"] == "kinds")
        assert [(r["name"], r["reason"][:30]) for r in row["refused"]] == [
            ("not_a_kind", "'start: \"x\"' is not a constrai")]


def test_an_unknown_hook_is_named_not_fatal(monkeypatch, caplog) -> None:
    """A plugin implementing a hook pyllm does not have (a typo) is reported with its name."""
    import importlib.metadata
    import types

    module = types.ModuleType("typo_plugin")

    @hookimpl
    def register_samplerz(register):
        register("never", lambda logits, context: logits)

    module.register_samplerz = register_samplerz
    monkeypatch.setitem(sys.modules, "typo_plugin", module)
    ep = importlib.metadata.EntryPoint(name="typo", value="typo_plugin", group="pyllm")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep])
    host = PluginHost(None)
    assert host.registry("samplers") == {}
    assert any(r.getMessage().startswith("plugin 'typo': ") and "register_samplerz" in r.getMessage()
               for r in caplog.records)
