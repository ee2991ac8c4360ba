"""The plugin manager: registries, isolation of broken plugins, PYLLM_PLUGINS, laziness."""

from __future__ import annotations

import logging
import subprocess
import sys

import click
import pytest

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


class RaisingPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("half_registered", lambda logits, context: logits)
        raise RuntimeError("boom in samplers")

    @hookimpl
    def register_tasks(self, register):
        register("fine_task", object())


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


def test_bad_register_arguments_are_a_hook_failure(host: PluginHost, caplog) -> None:
    with host.registered(BadArgsPlugin(), name="bad-args"):
        host.registry("samplers")
        row = next(r for r in host.report() if r["name"] == "bad-args")
        assert "TypeError" in row["error"] and "42" in row["error"]


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
