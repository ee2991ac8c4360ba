"""The `pyllm` command line: help, version, error handling, `pyllm plugins`, `pyllm tokenize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import pyllm
from pyllm import plugins
from pyllm.cli.main import BUILTIN_COMMANDS, cli
from pyllm.hookspecs import hookimpl


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pyllm.cli.main", *args], capture_output=True,
                          text=True, env=full_env, timeout=180)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    stderr = result.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 if hasattr(result, "exit_code") else result.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in stderr


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pyllm {pyllm.__version__}"


def test_help_lists_builtin_commands_without_importing_them() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name, (_, short_help) in BUILTIN_COMMANDS.items():
        assert name in out.stdout
        assert short_help[:30] in out.stdout.replace("\n", " ") or name in out.stdout
    # --help imports neither torch nor any command module nor the tokenizer implementations
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyllm.cli.main", "--help"],
                         capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "torch" not in imported
    assert "pyllm_tokenizers.bpe" not in imported
    modules = {target.split(":")[0] for target, _ in BUILTIN_COMMANDS.values()}
    assert not modules & imported


@pytest.mark.parametrize("name", ["plugins", "tokenize"])
def test_subcommand_help(name: str) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.stdout and name in result.stdout


def test_usage_errors_exit_2_with_one_line() -> None:
    assert_one_line_error(invoke("no-such-command"), "no-such-command")
    assert_one_line_error(invoke("plugins", "--bogus"), "--bogus", "pyllm plugins --help")
    assert_one_line_error(invoke("tokenize"), "give either TEXT or --file")


def test_plugins_command() -> None:
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["tokenizers"]["distribution"] == "pyllm"
    assert rows["tokenizers"]["version"] == pyllm.__version__
    assert {"gpt2", "llama"} <= set(rows["tokenizers"]["registered"]["tokenizers"])
    text = invoke("plugins").stdout
    assert "tokenizers: pyllm" in text and "gpt2" in text


class CommandPlugin:
    @hookimpl
    def register_commands(self, register):
        @click.command(name="test-fail")
        @click.option("--kind", type=click.Choice(["value", "internal", "missing"]))
        def fail(kind: str) -> None:
            """Fail on purpose."""
            if kind == "value":
                raise ValueError("bad value 'x' for --kind")
            if kind == "missing":
                open("/no/such/file.txt")  # noqa: SIM115
            raise RuntimeError("unexpected")

        register(fail)


def test_errors_are_handled_in_one_place() -> None:
    with plugins.registered(CommandPlugin(), name="command-plugin"):
        assert "test-fail" in invoke("--help").stdout
        assert_one_line_error(invoke("test-fail", "--kind", "value"), "bad value 'x'")
        assert_one_line_error(invoke("test-fail", "--kind", "missing"), "/no/such/file.txt")
        internal = invoke("test-fail", "--kind", "internal")
        assert internal.exit_code == 1
        assert "error: internal error: RuntimeError: unexpected" in internal.stderr
        assert "Traceback" not in internal.stderr
        debug = invoke("--debug", "test-fail", "--kind", "value")
        assert debug.exit_code == 2 and "Traceback" in debug.stderr


# --------------------------------------------------------------------------------------------
# pyllm tokenize
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_path: Path):
    from pyllm.tokenizer import load_tokenizer_from_gguf

    return load_tokenizer_from_gguf(smollm2_path)


def test_tokenize_json(smollm2_path: Path, smollm2_tok) -> None:
    text = "Hello   3. 你好 👩‍👩‍👧 <|im_end|>"
    result = invoke("tokenize", str(smollm2_path), text, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ids"] == smollm2_tok.encode(text)
    assert data["pieces"] == [smollm2_tok.id_to_piece(i) for i in data["ids"]]
    special = json.loads(invoke("tokenize", str(smollm2_path), "<|im_end|>", "--json",
                                "--special").stdout)
    assert special["ids"] == [smollm2_tok.eos_id]


def test_tokenize_text_output_and_file(smollm2_path: Path, smollm2_tok, tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("line one\nline two\n", encoding="utf-8")
    result = invoke("tokenize", str(smollm2_path), "--file", str(path))
    assert result.exit_code == 0, result.stderr
    ids = [int(line.split()[0]) for line in result.stdout.splitlines()]
    assert ids == smollm2_tok.encode(path.read_text())


def test_tokenize_bad_input(smollm2_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    assert_one_line_error(invoke("tokenize", str(missing), "hi"), str(missing))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(200)))
    assert_one_line_error(invoke("tokenize", str(corrupt), "hi"), str(corrupt))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    assert_one_line_error(invoke("tokenize", str(smollm2_path), "--file", str(latin1)),
                          str(latin1), "UTF-8")
    assert_one_line_error(invoke("tokenize", str(smollm2_path), "hi", "--file", str(latin1)),
                          "exactly one")
    assert_one_line_error(invoke("tokenize", str(tmp_path / "tokenizer.json"), "hi"),
                          "tokenizer.json")


def test_tokenize_unknown_pre_tokenizer(smollm2_path: Path, tmp_path: Path) -> None:
    """A GGUF naming a pre-tokenizer pyllm does not know: exit 2 naming the key and value."""
    from gguf import GGUFWriter

    path = tmp_path / "odd-pre.gguf"
    writer = GGUFWriter(path, arch="llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "martian")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "ab"])
    writer.add_array("tokenizer.ggml.merges", ["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_one_line_error(invoke("tokenize", str(path), "hi"), str(path), "tokenizer.ggml.pre",
                          "martian")


def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "pyllm"]
    assert ep.value == "pyllm.cli.main:main"


class ShadowPlugin:
    @hookimpl
    def register_commands(self, register):
        register(click.Command("tokenize", callback=lambda: click.echo("shadow")))


def test_plugin_cannot_replace_a_builtin_command() -> None:
    with plugins.registered(ShadowPlugin(), name="shadow"):
        result = invoke("--help")
        assert "a plugin registers the command 'tokenize'" in result.stderr
        assert "shadow" not in invoke("tokenize", "--help").stdout


@pytest.mark.parametrize("command", [["run", "smollm2", "Hi"], ["perplexity", "smollm2", __file__]])
@pytest.mark.parametrize("flag,expected", [([], False), (["--int8"], True), (["--exact"], False)])
def test_int8_option_reaches_the_loader(monkeypatch, command, flag, expected) -> None:
    """`--int8/--exact` (default exact) decides the activations the model is loaded with."""
    import pyllm.api

    seen = []

    def fake_load(*args, **kwargs):
        seen.append(kwargs.get("int8_activations", False))
        raise click.ClickException("stop here")

    monkeypatch.setattr(pyllm.api, "load", fake_load)
    result = invoke(*command, *flag)
    assert result.exit_code == 1 and "stop here" in result.output
    assert seen == [expected]


def record_devices(monkeypatch, usable: bool) -> list[str]:
    """Make CUDA usable or not, and replace the loader with one that records the device it is
    asked for and stops the command there (ClickException "stop here")."""
    import pyllm
    import pyllm.api
    from pyllm.cli import options

    monkeypatch.setattr(options, "cuda_unusable_reason", lambda: None if usable else "no GPU here")
    seen: list[str] = []

    def fake_load(model, device="cpu", **kwargs):
        seen.append(device)
        raise click.ClickException("stop here")

    monkeypatch.setattr(pyllm, "load", fake_load)  # first: its lazy lookup reads pyllm.api.load
    monkeypatch.setattr(pyllm.api, "load", fake_load)
    return seen


@pytest.mark.parametrize("command", [["run", "smollm2", "Hi"], ["perplexity", "smollm2", __file__],
                                     ["classify", "Hi", "--labels", "a,b"]])
@pytest.mark.parametrize("usable", [True, False])
@pytest.mark.parametrize("flags,expected", [([], "cuda|cpu"), (["--device", "cpu"], "cpu"),
                                            (["--device", "auto", "--int8"], "cpu"),
                                            (["--device", "cuda"], "cuda|error")])
def test_device_option_reaches_the_loader(monkeypatch, command, usable, flags, expected) -> None:
    """`--device auto` (the default) loads on cuda when pyllm's CUDA kernels and a GPU are both
    there, else on the CPU (and on the CPU with --int8); `--device cuda` where it cannot run is a
    usage error that says why."""
    if "--int8" in flags and command[0] == "classify":
        pytest.skip("the task commands have no --int8")
    seen = record_devices(monkeypatch, usable)
    result = invoke(*command, *flags)
    when_usable, _, when_not = expected.partition("|")
    want = when_usable if usable or not when_not else when_not
    if want == "error":
        assert result.exit_code == 2 and "--device cuda: no GPU here" in result.output
        assert seen == []
    else:
        assert result.exit_code == 1 and "stop here" in result.output
        assert seen == [want]


def test_int8_with_device_cuda_is_refused(monkeypatch) -> None:
    from pyllm.cli import options

    monkeypatch.setattr(options, "cuda_unusable_reason", lambda: None)
    result = invoke("run", "smollm2", "Hi", "--device", "cuda", "--int8")
    assert result.exit_code == 2 and "--int8 selects CPU kernels" in result.output


@pytest.mark.parametrize("usable,flags,expected", [(False, [], "cpu"), (True, [], "cuda"),
                                                   (True, ["--device", "cpu"], "cpu")])
def test_device_option_reaches_chat_and_generate(monkeypatch, tmp_path, usable, flags, expected) -> None:
    """The same option on the two commands that load through other paths (the REPL backend, the
    JSONL job runner)."""
    seen = record_devices(monkeypatch, usable)
    job = tmp_path / "in.jsonl"
    job.write_text('{"id": "a", "prompt": "Hi"}\n')
    for command in (["chat"], ["generate", "-i", str(job), "-o", str(tmp_path / "out.jsonl")]):
        result = invoke(*command, *flags)
        assert result.exit_code == 1 and "stop here" in result.output, result.output
    assert seen == [expected, expected]


@pytest.mark.parametrize("args,example", [(["Write a limerick about tea"], "'Write a limerick about tea'"),
                                          (["smollm2"], "'Write a haiku about the sea'")])
def test_run_without_a_prompt_says_the_model_comes_first(args, example) -> None:
    """`pyllm run "text"` (as `llm` users type it) is a usage error that shows the right order,
    before any model is loaded."""
    result = invoke("run", *args)
    assert result.exit_code == 2
    assert f"the model comes first, then the prompt, e.g. pyllm run smollm2 {example}" in result.stderr
    assert "pyllm run --help" in result.stderr
