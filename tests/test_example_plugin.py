"""The separately installable plugin in plugins/example_plugin, installed the way a user would
(pip, offline, into a throwaway target folder), seen by `pyllm plugins` and working; and a broken
plugin (failing at import, raising in a hook) reported once and skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "example_plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder with pyllm-example pip-installed into it, plus a hand-made broken distribution."""
    tmp = tmp_path_factory.mktemp("plugins")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )
    _make_broken_distribution(target)
    return target


def _make_broken_distribution(target: Path) -> None:
    """pyllm-broken: one entry point whose module raises on import, one whose hook raises."""
    (target / "pyllm_broken_import.py").write_text("raise ImportError('cannot import me')\n")
    (target / "pyllm_broken_hook.py").write_text(
        "import click\n"
        "from pyllm.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_samplers(register):\n"
        "    raise RuntimeError('hook exploded')\n"
        "@hookimpl\n"
        "def register_commands(register):\n"
        "    register(click.Command('broken-but-listed', callback=lambda: click.echo('still here')))\n"
    )
    info = target / "pyllm_broken-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pyllm-broken\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(
        "[pyllm]\nbroken_import = pyllm_broken_import\nbroken_hook = pyllm_broken_hook\n"
    )


def pyllm(site: Path, *args: str, plugins: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYLLM_PLUGINS", None)
    if plugins is not None:
        env["PYLLM_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "pyllm.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_example_plugin_is_listed(site: Path) -> None:
    out = pyllm(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    example = rows["example"]
    assert (example["distribution"], example["version"]) == ("pyllm-example", "0.1.0")
    assert example["builtin"] is False and example["error"] is None
    assert example["registered"] == {
        "samplers": ["top_a"], "tasks": ["sentiment"], "commands": ["example-hello"],
        "repl_commands": ["shout"]}
    # the built-ins are there too, and intact
    assert "gpt2" in rows["tokenizers"]["registered"]["tokenizers"]


def test_example_command_runs_and_shows_in_help(site: Path) -> None:
    out = pyllm(site, "example-hello", "Ada")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Hello, Ada! (from pyllm-example 0.1.0)"
    helptext = pyllm(site, "--help").stdout
    assert "example-hello" in helptext.split("Plugin commands:")[1]


def test_broken_plugins_are_reported_once_and_skipped(site: Path) -> None:
    out = pyllm(site, "plugins", "--json")
    assert out.returncode == 0
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    import_warnings = [w for w in warnings if "broken_import" in w]
    hook_warnings = [w for w in warnings if "broken_hook" in w]
    assert len(import_warnings) == 1 and "cannot import me" in import_warnings[0]
    assert len(hook_warnings) == 1 and "hook exploded" in hook_warnings[0]
    assert "Traceback" not in out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert "cannot import me" in rows["broken_import"]["error"]
    assert rows["broken_import"]["distribution"] == "pyllm-broken"
    assert "hook exploded" in rows["broken_hook"]["error"]
    assert rows["broken_hook"]["registered"] == {"commands": ["broken-but-listed"]}
    # pyllm keeps working: other plugins' commands, and the broken plugin's healthy hook
    assert pyllm(site, "example-hello").returncode == 0
    still = pyllm(site, "broken-but-listed")
    assert still.stdout.strip() == "still here"
    helped = pyllm(site, "--help")  # --help builds the command list several times
    assert sum("hook exploded" in line for line in helped.stderr.splitlines()) == 0  # no samplers
    assert sum("cannot import me" in line for line in helped.stderr.splitlines()) == 1


def test_pyllm_plugins_selects(site: Path) -> None:
    out = pyllm(site, "plugins", "--json", plugins="builtin")
    names = {row["name"] for row in json.loads(out.stdout)}
    assert names == {"tokenizers", "samplers", "tasks", "sources"}
    assert "warning" not in out.stderr
    out = pyllm(site, "plugins", "--json", plugins="builtin,pyllm-example")
    names = {row["name"] for row in json.loads(out.stdout)}
    assert names == {"tokenizers", "samplers", "tasks", "sources", "example"}
    out = pyllm(site, "example-hello", plugins="builtin")
    assert out.returncode == 2 and "No such command 'example-hello'" in out.stderr


def test_top_a_step(site: Path, monkeypatch) -> None:
    """The plugin's sampler step, found through the registry, against a plain reference."""
    torch = pytest.importorskip("torch")
    from pyllm import plugins
    from pyllm.types import SamplerStep, SamplingContext

    monkeypatch.syspath_prepend(str(site))
    host = plugins.PluginHost({"pyllm-example"})
    step = host.registry("samplers")["top_a"]
    assert isinstance(step, SamplerStep) and step.name == "top_a"
    gen = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 10.0):
        logits = torch.randn(4, 50, generator=gen) * scale
        out = step(logits.clone(), SamplingContext(params=[], prompt_ids=[], output_ids=[]))
        p = torch.softmax(logits.double(), dim=-1)
        keep = p >= step.a * p.max(dim=-1, keepdim=True).values ** 2
        assert torch.equal(torch.isfinite(out), keep)
        assert torch.equal(out[keep], logits[keep])
