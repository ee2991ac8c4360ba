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
    return subprocess.run([sys.executable, "-m", "pyllm.cli.main", *args], check=False,
                          capture_output=True, text=True, env=full_env, timeout=180)


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
                         check=False, capture_output=True, text=True, timeout=120)
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
        assert "plugin 'shadow': command 'tokenize' refused" in result.stderr
        assert "shadow" not in invoke("tokenize", "--help").stdout
        row = next(r for r in plugins.plugin_report() if r["name"] == "shadow")
        assert "commands" not in row["registered"]
        assert row["refused"] == [{"kind": "commands", "name": "tokenize",
                                   "reason": "a built-in command has that name"}]


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
def test_device_option_reaches_chat_and_generate(monkeypatch, tmp_path, usable, flags,
                                                  expected) -> None:
    """The same option on the two commands that load through other paths (the REPL backend, the
    JSONL job runner)."""
    seen = record_devices(monkeypatch, usable)
    job = tmp_path / "in.jsonl"
    job.write_text('{"id": "a", "prompt": "Hi"}\n')
    for command in (["chat"], ["generate", "-i", str(job), "-o", str(tmp_path / "out.jsonl")]):
        result = invoke(*command, *flags)
        assert result.exit_code == 1 and "stop here" in result.output, result.output
    assert seen == [expected, expected]


@pytest.mark.parametrize("args,example", [(["Write a limerick about tea"],
                                           "'Write a limerick about tea'"),
                                          (["smollm2"], "'Write a haiku about the sea'")])
def test_run_without_a_prompt_says_the_model_comes_first(args, example) -> None:
    """`pyllm run "text"` (as `llm` users type it) is a usage error that shows the right order,
    before any model is loaded."""
    result = invoke("run", *args)
    assert result.exit_code == 2
    expected = f"the model comes first, then the prompt, e.g. pyllm run smollm2 {example}"
    assert expected in result.stderr
    assert "pyllm run --help" in result.stderr


# ------------------------------------------------------------------ one family of commands


class FakeTokenizer:
    def decode(self, ids, **kwargs) -> str:
        return "".join(f"<{i}>" for i in ids)


class FakeLLM:
    """Records what `run` asks of a model; replies without one."""

    def __init__(self) -> None:
        self.tokenizer = FakeTokenizer()
        self.calls: list[tuple[str, object, object]] = []

    def generate(self, prompts, params, truncate=None):
        from pyllm.generation import Completion, GenerationResult, TokenLogprob

        self.calls.append(("generate", prompts[0], params))
        outputs = []
        for j in range(params.n):
            logprobs = None
            if params.logprobs is not None:
                top = [(10 + j, -0.5), (3, -1.5)][:params.logprobs]
                logprobs = [TokenLogprob(10 + j, -0.5, top)]
            outputs.append(Completion(f"reply {j}", [10 + j], "stop", logprobs))
        return [GenerationResult([1, 2], outputs)]

    def stream_events(self, prompt, params, truncate=None):
        from pyllm.generation import Completion, StreamEvent

        self.calls.append(("stream", prompt, params))
        done = Completion("hello", [7, 8], "stop")

        def events():
            yield StreamEvent(0, 0, "hel", False, done)
            yield StreamEvent(0, 0, "lo", False, done)
            yield StreamEvent(0, 0, "", True, done)

        return events()

    def encode_prompt(self, prompt):
        return [1, 2, 3]


@pytest.fixture
def fake_llm(monkeypatch):
    """`run` and `chat` load this fake; what they loaded is in fake.loads."""
    from pyllm.cli import chat as chat_module
    from pyllm.cli import run as run_module

    fake = FakeLLM()
    fake.loads = []

    def load_llm(model, **options):
        fake.loads.append((model, options))
        return fake

    monkeypatch.setattr(run_module, "load_llm", load_llm)
    monkeypatch.setattr(chat_module, "load_llm", load_llm)
    return fake


def test_run_json_prints_logprobs_and_every_completion(fake_llm) -> None:
    result = invoke("run", "smollm2", "Hi", "--json", "--set", "logprobs=2", "--set", "n=2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"] == "reply 0" and record["token_ids"] == [10]
    assert record["logprobs"] == [{"token_id": 10, "logprob": -0.5, "token": "<10>",
                                   "top": [{"token_id": 10, "logprob": -0.5, "token": "<10>"},
                                           {"token_id": 3, "logprob": -1.5, "token": "<3>"}]}]
    assert [o["text"] for o in record["outputs"]] == ["reply 0", "reply 1"]
    assert all("logprobs" in o for o in record["outputs"])
    plain = json.loads(invoke("run", "smollm2", "Hi", "--json").stdout)
    assert "logprobs" not in plain and "outputs" not in plain


def test_run_prints_each_completion_for_n_above_1(fake_llm) -> None:
    result = invoke("run", "smollm2", "Hi", "--set", "n=3")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "--- completion 1 of 3 ---", "reply 0", "--- completion 2 of 3 ---", "reply 1",
        "--- completion 3 of 3 ---", "reply 2"]
    assert "stream()" not in result.output


def test_run_samples_with_the_chat_defaults(fake_llm) -> None:
    from pyllm.cli.options import SAMPLING_DEFAULTS

    assert invoke("run", "smollm2", "Hi").exit_code == 0
    params = fake_llm.calls[-1][2]
    assert {k: getattr(params, k) for k in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS
    assert params.temperature != 1.0  # SamplingParams()'s own default
    help_text = invoke("run", "--help").stdout
    assert "[default: 0.7]" in help_text and "[default: 40]" in help_text
    assert "[default: 0.7]" in invoke("chat", "--help").stdout


def test_run_reads_the_prompt_from_a_pipe(fake_llm) -> None:
    result = CliRunner().invoke(cli, ["run", "smollm2"], input="hi from a pipe\n")
    assert result.exit_code == 0, result.output
    assert fake_llm.calls == [("stream", "hi from a pipe\n", fake_llm.calls[0][2])]
    assert result.stdout == "hello\n"


def test_run_without_a_prompt_in_a_terminal_opens_the_chat(fake_llm, monkeypatch) -> None:
    from pyllm.cli import chat as chat_module
    from pyllm.cli import run as run_module

    opened = []
    monkeypatch.setattr(run_module, "stdin_text", lambda: None)  # a terminal
    monkeypatch.setattr(chat_module, "start_chat",
                        lambda model, params, **kw: opened.append((model, params.temperature, kw)))
    result = invoke("run", "smollm2", "--temperature", "0.2", "-s", "Be brief.", "--ctx", "256")
    assert result.exit_code == 0, result.output
    assert opened == [("smollm2", 0.2, {"system": "Be brief.", "continue_": False, "log": True,
                                         "int8": False, "kv_dtype": "float32", "device": "auto",
                                         "ctx": 256})]
    assert fake_llm.calls == []


@pytest.mark.parametrize("args,model,rest", [
    (["run", "-m", "tiny", "Hi"], "tiny", "Hi"),
    (["run", "--model", "tiny", "Hi"], "tiny", "Hi"),
    (["run", "tiny", "Hi"], "tiny", "Hi"),
])
def test_run_takes_the_model_as_an_option_or_first_argument(fake_llm, args, model, rest) -> None:
    assert invoke(*args).exit_code == 0
    assert fake_llm.loads[0][0] == model and fake_llm.calls[0][1] == rest


def test_model_option_on_every_model_command(monkeypatch, tmp_path) -> None:
    """-m/--model names the model of run, chat, perplexity and tokenize (and a positional
    argument after it is the next argument)."""
    import pyllm.api
    from pyllm.cli import tokenize as tokenize_module

    seen = []

    def fake_load(model, device="cpu", **kwargs):
        seen.append(model)
        raise click.ClickException("stop here")

    monkeypatch.setattr(pyllm.api, "load", fake_load)
    monkeypatch.setattr(tokenize_module, "tokenizer_for", fake_load)
    text = tmp_path / "t.txt"
    text.write_text("some text")
    for args in (["run", "-m", "tiny", "Hi"], ["chat", "-m", "tiny"],
                 ["perplexity", "-m", "tiny", str(text)], ["tokenize", "-m", "tiny", "Hi"]):
        result = invoke(*args)
        assert "stop here" in result.output, (args, result.output)
    assert seen == ["tiny"] * 4
    assert_one_line_error(invoke("run", "-m", "tiny", "Hi", "extra"), "-m tiny names the model")


@pytest.mark.parametrize("command", ["run", "chat", "perplexity"])
def test_load_options_are_the_same_everywhere(command) -> None:
    help_text = invoke(command, "--help").stdout
    for flag in ("-m, --model", "--int8 / --exact", "--kv-dtype", "--device"):
        assert flag in help_text, (command, flag)
    if command != "perplexity":  # there --ctx is the scoring window (its own option)
        assert "--ctx" in help_text and "-s, --system" in help_text


def test_load_options_reach_the_loader(monkeypatch) -> None:
    import pyllm.api

    seen = []

    def fake_load(model, device="cpu", **kwargs):
        seen.append(kwargs)
        raise click.ClickException("stop here")

    monkeypatch.setattr(pyllm.api, "load", fake_load)
    for command in (["run", "smollm2", "Hi"], ["chat", "smollm2"]):
        invoke(*command, "--kv-dtype", "float16", "--ctx", "128", "--device", "cpu")
    assert [(k["kv_dtype"], k["context_length"]) for k in seen] == [("float16", 128)] * 2


def test_chat_context_length_is_ctx_and_c_is_continue() -> None:
    """`-c` means --continue, as in `llm chat -c`; the context length is --ctx."""
    help_text = invoke("chat", "--help").stdout
    assert "--ctx" in help_text and "-c, --continue" in help_text
    assert "-c, --context-length" not in help_text


def test_chat_refuses_n_above_1(fake_llm) -> None:
    assert_one_line_error(invoke("chat", "smollm2", "--set", "n=3"), "n=3",
                          "one reply per message", "pyllm run --set n=3")
    assert fake_llm.loads == []


# ------------------------------------------------------------------ default model and aliases


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_aliases_set_list_remove(home, smollm2_path: Path) -> None:
    from pyllm.weights.resolve import resolve_model

    assert invoke("aliases", "set", "tiny", str(smollm2_path)).exit_code == 0
    assert invoke("aliases", "set", "small", "tiny").exit_code == 0
    assert invoke("aliases").stdout.splitlines() == ["small: tiny", f"tiny:  {smollm2_path}"]
    assert json.loads(invoke("aliases", "list", "--json").stdout) == {
        "small": "tiny", "tiny": str(smollm2_path)}
    assert resolve_model("small") == smollm2_path  # an alias may name another
    assert invoke("aliases", "remove", "small").exit_code == 0
    assert_one_line_error(invoke("aliases", "remove", "small"), "no alias named 'small'",
                          "aliases: tiny")
    assert_one_line_error(invoke("aliases", "set", "a/b", "x"), "'a/b'", "slashes")
    assert json.loads((home / "settings.json").read_text())["aliases"] == {
        "tiny": str(smollm2_path)}


def test_alias_loop_is_an_error(home) -> None:
    from pyllm.weights.resolve import resolve_model

    invoke("aliases", "set", "a", "b")
    invoke("aliases", "set", "b", "a")
    with pytest.raises(ValueError, match="aliases loop: a -> b -> a"):
        resolve_model("a")


def test_models_default(home, smollm2_path: Path, fake_llm) -> None:
    from pyllm.weights.resolve import resolve_model

    assert invoke("models", "default").stdout == "smollm2\n"
    assert invoke("aliases", "set", "mine", str(smollm2_path)).exit_code == 0
    assert invoke("models", "default", "mine").exit_code == 0
    assert invoke("models", "default").stdout == "mine\n"
    assert resolve_model(None) == smollm2_path
    assert invoke("models", "default", "--clear").exit_code == 0
    assert invoke("models", "default").stdout == "smollm2\n"


def test_a_broken_settings_file_is_one_error(home) -> None:
    home.mkdir(parents=True)
    (home / "settings.json").write_text("{not json")
    assert_one_line_error(invoke("aliases"), "settings.json: not valid JSON")


# ------------------------------------------------------------------ stdin, network


def test_tokenize_reads_a_pipe(smollm2_path: Path) -> None:
    piped = CliRunner().invoke(cli, ["tokenize", str(smollm2_path), "--json"],
                               input="Hello world")
    given = invoke("tokenize", str(smollm2_path), "--json", "Hello world")
    assert piped.exit_code == 0 and json.loads(piped.stdout)["ids"]
    assert json.loads(piped.stdout) == json.loads(given.stdout)


def test_offline_hub_id_is_refused_without_a_download(home, monkeypatch) -> None:
    """A Hub id not in the cache would be downloaded (announced); PYLLM_OFFLINE=1 refuses it
    with one error line before anything touches the network."""
    monkeypatch.setenv("PYLLM_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # importing it would fail
    assert_one_line_error(invoke("run", "someorg/somemodel", "hi"), "someorg/somemodel",
                          "PYLLM_OFFLINE")


def test_model_source_docs_say_when_pyllm_downloads() -> None:
    from pyllm import hookspecs

    doc = " ".join(hookspecs.register_model_sources.__doc__.split())
    assert "no network access at run time" not in doc
    assert "Hub id ``ORG/REPO`` that is not cached yet" in doc and "PYLLM_OFFLINE" in doc
    root = Path(__file__).resolve().parents[1]
    assert "PYLLM_OFFLINE" in (root / "docs" / "plugins.md").read_text()


def test_classify_refuses_empty_text(tmp_path) -> None:
    """An empty text is refused, alone (an error, not a confident label) or as a JSONL record
    (an error line, so --eval never counts it)."""
    from pyllm import tasks

    adapter = tasks.get("classify")
    for text in ("", "  \n"):
        with pytest.raises(ValueError, match='"text" is empty'):
            adapter.run(None, [{"text": text}], labels=["yes", "no"])  # refused before the model
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "text": ""}\n{"id": "b", "text": " "}\n')
    summary = tasks.run_jsonl(adapter, None, src, out, {"labels": ["yes", "no"]})
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert (summary.completed, summary.errors) == (0, 2)
    assert [(x["id"], x["error"]["type"]) for x in lines] == [("a", "invalid_record"),
                                                              ("b", "invalid_record")]
    assert all('"text" is empty' in x["error"]["message"] for x in lines)


def test_commands_without_a_model_leave_the_choice_to_the_default_setting(monkeypatch,
                                                                          tmp_path) -> None:
    """No -m: every model command asks the loader for the default (None), which is the model
    `pyllm models default` set, else smollm2 (resolve_model)."""
    from pyllm.cli import options

    monkeypatch.setattr(options, "cuda_unusable_reason", lambda: "no GPU here")
    models_seen = []
    import pyllm
    import pyllm.api

    def fake_load(model=None, device="cpu", **kwargs):
        models_seen.append(model)
        raise click.ClickException("stop here")

    monkeypatch.setattr(pyllm, "load", fake_load)
    monkeypatch.setattr(pyllm.api, "load", fake_load)
    job = tmp_path / "in.jsonl"
    job.write_text('{"id": "a", "prompt": "Hi"}\n')
    for command in (["run", "--json"], ["chat"], ["classify", "Hi", "--labels", "a,b"],
                    ["generate", "-i", str(job), "-o", str(tmp_path / "out.jsonl")]):
        result = CliRunner().invoke(cli, command, input="Hi\n")
        assert "stop here" in result.output, (command, result.output)
    assert models_seen == [None] * 4


# ------------------------------------------------------------------ conversation logs


@pytest.fixture
def logged(home, monkeypatch):
    monkeypatch.setenv("PYLLM_LOG", "1")
    return home / "logs.db"


def test_run_logs_and_continue_resumes_the_conversation(logged, fake_llm) -> None:
    from pyllm import logs

    assert invoke("run", "smollm2", "Hi", "--chat", "-s", "Be brief.", "--temperature", "0.2",
                  ).exit_code == 0
    assert invoke("run", "-c", "And then?").exit_code == 0
    first, second = logs.recent(None)
    assert (first.model, first.prompt, first.reply, first.system) == ("smollm2", "Hi", "hello",
                                                                       "Be brief.")
    assert first.settings["temperature"] == 0.2
    assert (first.prompt_tokens, first.completion_tokens, first.finish_reason) == (3, 2, "stop")
    assert second.conversation_id == first.conversation_id
    assert fake_llm.loads[-1][0] == "smollm2"  # the conversation's model
    assert fake_llm.calls[-1][1] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": "And then?"}]
    assert invoke("run", "smollm2", "Other", "--no-log").exit_code == 0
    assert len(logs.recent(None)) == 2


def test_logs_command_shows_searches_and_prints_json(logged, fake_llm) -> None:
    for prompt in ("about cats", "about dogs", "about birds"):
        invoke("run", "smollm2", prompt)
    out = invoke("logs", "-n", "2").stdout
    assert "about cats" not in out and out.index("about dogs") < out.index("about birds")
    assert "## Prompt" in out and "## Reply" in out and "smollm2" in out
    found = json.loads(invoke("logs", "-q", "CATS", "--json", "-n", "0").stdout)
    assert [r["prompt"] for r in found] == ["about cats"] and found[0]["reply"] == "hello"
    assert invoke("logs", "--path").stdout.strip() == str(logged)


def test_pyllm_log_0_turns_logging_off(home, fake_llm, monkeypatch) -> None:
    monkeypatch.setenv("PYLLM_LOG", "0")
    assert invoke("run", "smollm2", "Hi").exit_code == 0
    assert not (home / "logs.db").exists()
    assert_one_line_error(invoke("run", "-c", "more"), "--continue: no conversation logged yet")


def test_chat_turns_are_logged_and_continue_reloads_them(logged, monkeypatch) -> None:
    from test_repl import StubLLM

    from pyllm import logs

    llm = StubLLM()
    monkeypatch.setattr("pyllm.cli.chat.load_llm", lambda model, **kw: llm)
    result = CliRunner().invoke(cli, ["chat", "smollm2", "-s", "Be nice."],
                                input="first\nsecond\n/reset\nthird\n")
    assert result.exit_code == 0, result.output
    rows = logs.recent(None)
    assert [r.prompt for r in rows] == ["first", "second", "third"]
    assert rows[0].conversation_id == rows[1].conversation_id != rows[2].conversation_id
    assert rows[1].messages[-1] == {"role": "user", "content": "second"}
    assert rows[0].reply == "Hello world" and rows[0].system == "Be nice."
    result = CliRunner().invoke(cli, ["chat", "-c"], input="fourth\n/show conversation\n")
    assert result.exit_code == 0, result.output
    assert "continuing conversation" in result.output
    messages, _ = llm.seen[-1]
    assert [m["content"] for m in messages] == ["Be nice.", "third", "Hello world", "fourth"]
    assert logs.recent(1)[0].conversation_id == rows[2].conversation_id


def test_generate_writes_logprobs_when_asked(smollm2_path: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "prompt": "The sky is", "max_tokens": 2, "logprobs": 2, '
                   '"temperature": 0}\n{"id": "b", "prompt": "Hi", "max_tokens": 1}\n')
    result = invoke("generate", "-m", str(smollm2_path), "-i", str(src), "-o", str(out),
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    a, b = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda r: r["id"])
    assert [t["token_id"] for t in a["logprobs"]] == a["token_ids"]
    assert all(len(t["top"]) == 2 and t["logprob"] <= 0 for t in a["logprobs"])
    assert a["logprobs"][0]["top"][0]["token_id"] == a["token_ids"][0]  # greedy: the best
    assert "logprobs" not in b
