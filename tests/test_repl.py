"""The chat REPL driven through prompt-toolkit's pipe input, with a fake model.

Every test types keys into a real PromptSession (``create_pipe_input()`` / ``DummyOutput()``) and
reads what the REPL printed; the FakeBackend (tests/fake_backend.py) records what the model was
asked.
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from fake_backend import FakeBackend, echo_reply
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from pyllm.repl.backend import ChatBackend
from pyllm.repl.commands import build_registry
from pyllm.repl.completion import ReplCompleter
from pyllm.repl.conversation import Conversation
from pyllm.repl.render import sanitize
from pyllm.repl.session import ChatSession, history_path
from pyllm.repl.toolbar import toolbar_text
from pyllm.sampling_params import SamplingParams

ESC = "\x1b"
ENTER = "\r"
CTRL_C = "\x03"
CTRL_D = "\x04"
ALT_ENTER = "\x1b\r"


class Recorder(io.StringIO):
    """stdout that remembers each write (to see a reply arrive in pieces)."""

    def __init__(self, raise_on_write: int | None = None) -> None:
        super().__init__()
        self.writes: list[str] = []
        self._raise_on = raise_on_write

    def write(self, s: str) -> int:
        self.writes.append(s)
        if self._raise_on is not None and len(self.writes) == self._raise_on:
            self._raise_on = None
            raise KeyboardInterrupt  # as if Ctrl-C arrived while printing a delta
        return super().write(s)

    def isatty(self) -> bool:
        return False


def run(keys: str, backend: FakeBackend | None = None, *, stdout: io.StringIO | None = None,
        **kwargs: object) -> tuple[ChatSession, str]:
    """Type ``keys`` into a fresh session. The input is closed after them (the prompt then
    raises EOFError), so a session that fails to quit when told to ends anyway, without hanging:
    tests that check quitting put more keys after the quitting ones."""
    backend = backend or FakeBackend()
    stdout = stdout if stdout is not None else Recorder()
    with create_pipe_input() as inp:
        inp.send_text(keys)
        inp.close()
        session = ChatSession(backend, input=inp, output=DummyOutput(), stdout=stdout,
                              **kwargs)  # type: ignore[arg-type]
        session.run()
    return session, stdout.getvalue()


def test_fake_backend_is_a_chat_backend() -> None:
    assert isinstance(FakeBackend(), ChatBackend)


def test_reply_streams_in_pieces_and_is_recorded() -> None:
    backend = FakeBackend()
    out = Recorder()
    session, text = run("hello there" + ENTER + "/exit" + ENTER, backend, stdout=out)
    expected = echo_reply([{"role": "user", "content": "hello there"}])
    assert expected in text
    # streamed: the words arrived as separate writes, in order, before the reply was complete
    pieces = [w for w in out.writes if w.strip() and w.strip() in expected]
    assert len(pieces) == len(expected.split(" "))
    assert "".join(pieces) == expected
    assert session.conversation.messages == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": expected},
    ]
    assert backend.calls[0][0] == [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize("name, value, range_text", [
    ("temperature", "-1", ">= 0"),
    ("top_p", "1.5", "(0, 1]"),
    ("top_k", "many", ">= 0"),
    ("min_p", "2", "[0, 1]"),
    ("max_tokens", "0", ">= 1"),
])
def test_set_rejects_bad_values_naming_field_and_range(name: str, value: str,
                                                       range_text: str) -> None:
    backend = FakeBackend()
    session, text = run(f"/set {name} {value}{ENTER}hi{ENTER}/exit{ENTER}", backend)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert name in errors[0] and range_text in errors[0] and value in errors[0]
    assert session.params == SamplingParams()  # unchanged
    assert backend.calls[0][1] == SamplingParams()  # the REPL went on


def test_set_changes_sampling_and_settings() -> None:
    backend = FakeBackend()
    keys = ("/set temperature 0.3" + ENTER + "/set samplers 'top_k; temperature'" + ENTER
            + "/set seed 42" + ENTER + "/set markdown off" + ENTER + "/set markdown maybe"
            + ENTER + "/set temprature 1" + ENTER + "hi" + ENTER + "/exit" + ENTER)
    session, text = run(keys, backend)
    params = backend.calls[0][1]
    assert (params.temperature, params.samplers, params.seed) == (0.3, "top_k;temperature", 42)
    assert session.settings["markdown"] is False and session.renderer.markdown is False
    assert "error: markdown must be on or off, got 'maybe'" in text
    near = difflib.get_close_matches("temprature", SamplingParams.field_names(), n=1)[0]
    assert f"did you mean {near!r}" in text


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "talk.json"
    backend = FakeBackend(interrupt_after=2)
    keys = (f"/system be brief{ENTER}first{ENTER}/set temperature 0.25{ENTER}"
            f"/save {path}{ENTER}/exit{ENTER}")
    saved, _ = run(keys, backend)
    assert saved.conversation.messages[-1]["cut"] is True
    data = json.loads(path.read_text())
    assert data["messages"] == saved.conversation.messages

    loaded, text = run(f"/load {path}{ENTER}/exit{ENTER}", FakeBackend(),
                       system="something else")
    assert loaded.conversation == saved.conversation
    assert loaded.params.temperature == 0.25
    assert f"loaded {len(saved.conversation.messages)} messages" in text
    # and the loaded conversation is what the model sees next
    backend2 = FakeBackend()
    run(f"/load {path}{ENTER}again{ENTER}/exit{ENTER}", backend2)
    assert backend2.calls[0][0] == saved.conversation.for_model("again")


@pytest.mark.parametrize("content", [
    "{not json",
    '{"messages": "nope"}',
    '{"messages": [{"role": "wizard", "content": "x"}]}',
    '{"messages": [{"role": "user", "content": 3}]}',
    '{"format": "something-else", "messages": []}',
    "[1, 2]",
    b"\xff\xfe\x00garbage",
])
def test_load_corrupt_file_is_an_error_and_repl_lives(tmp_path: Path,
                                                      content: str | bytes) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    backend = FakeBackend()
    session, text = run(f"first{ENTER}/load {path}{ENTER}second{ENTER}/exit{ENTER}", backend)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a conversation file" in errors[0] and str(path) in errors[0]
    assert [m["content"] for m in session.conversation.messages if m["role"] == "user"] == [
        "first", "second"]  # the old conversation stayed, and the REPL kept answering


def test_load_missing_file(tmp_path: Path) -> None:
    _, text = run(f"/load {tmp_path / 'nope.json'}{ENTER}/exit{ENTER}")
    assert "error: cannot read" in text and "nope.json" in text


def test_unknown_command_suggests_nearest() -> None:
    session, text = run(f"/hlep{ENTER}/sav x{ENTER}/zzzzzzzz{ENTER}/exit{ENTER}")
    names = session.registry.names()
    for typo in ("hlep", "sav"):
        near = difflib.get_close_matches(typo, names, n=1, cutoff=0.5)[0]
        assert f"unknown command /{typo}; did you mean /{near}?" in text
    assert "unknown command /zzzzzzzz (/help" in text
    assert not session.conversation.messages


def test_overflow_drops_oldest_turns_with_notice() -> None:
    backend = FakeBackend(context_length=80)
    params = SamplingParams(max_tokens=10)
    words = " ".join(["word"] * 8)
    keys = "".join(f"{i} {words}{ENTER}" for i in range(6)) + "/exit" + ENTER
    session, text = run(keys, backend, params=params, system="sys prompt")
    notices = re.findall(r"context full: dropped the (\d+) oldest turns?", text)
    assert notices, text
    reserve = session.reply_reserve()
    seen: list[dict[str, str]] = []
    for messages, _ in backend.calls:
        # every request fits with room for the reply, and keeps the system prompt
        assert backend.count_tokens(messages) + reserve <= backend.context_length
        assert messages[0] == {"role": "system", "content": "sys prompt"}
        seen.append(messages[-1])
    # the turns the model saw last are the newest ones, oldest first, none missing in between
    last = backend.calls[-1][0][1:]
    users = [m["content"] for m in last if m["role"] == "user"]
    first_kept = int(users[0].split()[0])
    assert users == [f"{i} {words}" for i in range(first_kept, 6)]
    assert sum(int(n) for n in notices) == first_kept


def test_too_long_message_is_refused_with_numbers() -> None:
    backend = FakeBackend(context_length=64)
    long = " ".join(["w"] * 100)
    session, text = run(f"short{ENTER}{long}{ENTER}/exit{ENTER}", backend,
                        params=SamplingParams(max_tokens=8))
    needed = backend.count_tokens([{"role": "user", "content": long}])
    error = next(line for line in text.splitlines() if line.startswith("error:"))
    assert "message too long" in error
    assert str(needed) in error and "64" in error and "8" in error
    assert len(backend.calls) == 1  # never sent
    assert session.conversation.messages[0]["content"] == "short"
    assert len(session.conversation.messages) == 2


def test_ctrl_c_mid_reply_keeps_partial_reply_marked_cut() -> None:
    backend = FakeBackend(interrupt_after=3)
    session, text = run(f"tell me{ENTER}/show conversation{ENTER}/exit{ENTER}", backend)
    full = echo_reply([{"role": "user", "content": "tell me"}])
    partial = " ".join(full.split(" ")[:3])
    assert session.conversation.messages[-1] == {"role": "assistant", "content": partial,
                                                 "cut": True}
    assert "reply cut" in text
    assert f"[assistant (cut)] {partial}" in text  # /show ran: the REPL is alive


def test_ctrl_c_while_printing_closes_the_stream() -> None:
    backend = FakeBackend()
    out = Recorder(raise_on_write=3)  # the first write is the greeting
    session, _ = run(f"tell me{ENTER}next{ENTER}/exit{ENTER}", backend, stdout=out)
    assert backend.closed == 1  # the generator was closed: a real engine cancels the request
    first_reply = session.conversation.messages[1]
    assert first_reply["cut"] is True
    assert session.conversation.messages[2] == {"role": "user", "content": "next"}
    assert "cut" not in session.conversation.messages[3]


def test_ctrl_c_at_prompt_clears_line_and_twice_quits() -> None:
    backend = FakeBackend()
    _, text = run(f"never sent{CTRL_C}{CTRL_C}{CTRL_C}after{ENTER}", backend)
    assert not backend.calls  # the first Ctrl-C cleared the line, the next two quit
    assert "press Ctrl-C again to quit" in text


@pytest.mark.parametrize("between", ["x\x7f", ENTER, "hi" + ENTER])
def test_ctrl_c_not_twice_in_a_row_does_not_quit(between: str) -> None:
    # typing (even if erased again) or accepting a line between two Ctrl-C keeps the REPL
    backend = FakeBackend()
    run(f"{CTRL_C}{between}{CTRL_C}after{ENTER}/exit{ENTER}", backend)
    assert backend.calls[-1][0][-1]["content"] == "after"


def test_ctrl_d_quits() -> None:
    backend = FakeBackend()
    run(f"hi{ENTER}{CTRL_D}after{ENTER}", backend)
    assert [c[0][-1]["content"] for c in backend.calls] == ["hi"]


def test_exit_quits() -> None:
    backend = FakeBackend()
    run(f"/exit{ENTER}after{ENTER}", backend)
    assert not backend.calls


def test_multiline_key_binding_and_triple_quote_block() -> None:
    backend = FakeBackend()
    keys = f'one{ALT_ENTER}two{ENTER}"""three{ENTER}four"""{ENTER}/exit{ENTER}'
    run(keys, backend)
    assert [c[0][-1]["content"] for c in backend.calls] == ["one\ntwo", "three\nfour"]


def test_double_slash_sends_a_slash() -> None:
    backend = FakeBackend()
    run(f"//etc/hosts is a file{ENTER}/exit{ENTER}", backend)
    assert backend.calls[0][0][-1]["content"] == "/etc/hosts is a file"


@pytest.mark.parametrize("reset", ["/reset", "/clear"])  # /clear: ollama's name for it
def test_system_reset_regen(reset: str) -> None:
    counter = iter(range(100))

    def reply(messages: Sequence[dict[str, str]]) -> str:
        return f"answer {next(counter)}"

    backend = FakeBackend(reply=reply)
    keys = (f"/system you are terse{ENTER}q1{ENTER}/regen{ENTER}{reset}{ENTER}q2{ENTER}"
            f"/exit{ENTER}")
    session, _ = run(keys, backend)
    sent = [c[0] for c in backend.calls]
    assert sent[0] == [{"role": "system", "content": "you are terse"},
                       {"role": "user", "content": "q1"}]
    assert sent[1] == sent[0]  # /regen asks the same thing again
    assert sent[2] == [{"role": "system", "content": "you are terse"},
                       {"role": "user", "content": "q2"}]  # /reset kept the system prompt
    assert session.conversation.messages == [{"role": "user", "content": "q2"},
                                             {"role": "assistant", "content": "answer 2"}]


def test_regen_without_message() -> None:
    backend = FakeBackend()
    _, text = run(f"/regen{ENTER}/exit{ENTER}", backend)
    assert "nothing to regenerate" in text and not backend.calls


def test_read_puts_file_in_next_prompt(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_text("line a\nline b\n")
    backend = FakeBackend()
    run(f"/read {path}{ENTER}{ENTER}/exit{ENTER}", backend)
    assert backend.calls[0][0][-1]["content"] == "line a\nline b"


def test_tokens_and_stats() -> None:
    backend = FakeBackend()
    _, text = run(f"/tokens a b a{ENTER}/stats{ENTER}hi{ENTER}/stats{ENTER}/exit{ENTER}",
                  backend)
    ids, pieces = backend.tokenize("a b a")
    assert f"{len(ids)} tokens" in text
    assert "  ".join(f"{i}:{p!r}" for i, p in zip(ids, pieces)) in text
    assert "no reply yet" in text
    assert f"reply tokens    {backend.last_stats.tokens}" in text


def test_help_lists_every_command() -> None:
    session, text = run(f"/help{ENTER}/help set{ENTER}/exit{ENTER}")
    for cmd in session.registry:
        assert cmd.synopsis in text
    assert "temperature" in text  # /help set lists the settable names


def test_toolbar_shows_model_context_and_speed() -> None:
    backend = FakeBackend(delay=0.001)
    session, _ = run(f"hi{ENTER}/exit{ENTER}", backend)
    bar = toolbar_text(session)
    used = backend.count_tokens(session.conversation.for_model())
    assert backend.model_name in bar
    assert f"{used}/{backend.context_length}" in bar
    assert f"{backend.last_stats.tokens_per_s:.1f} tok/s" in bar


def test_markdown_rerender_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Recorder()
    _, text = run(f"hi{ENTER}/exit{ENTER}", stdout=out, force_terminal=True, width=80,
                  height=24)
    reply = echo_reply([{"role": "user", "content": "hi"}])
    _streamed, found, rerendered = text.partition(reply)  # the plain text streamed first
    assert found == reply
    assert len(reply) < 80
    assert "\x1b[1F\x1b[J" in rerendered  # back up the one row the plain reply took, clear
    assert "**" not in rerendered  # then Markdown: bold without asterisks
    assert "You said:" in rerendered


def test_markdown_off_keeps_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    _, text = run(f"/set markdown off{ENTER}hi{ENTER}/exit{ENTER}", force_terminal=True)
    reply = echo_reply([{"role": "user", "content": "hi"}])
    after = text.split(reply, 1)[1]
    assert "\x1b[J" not in after and "You said" not in after


def test_no_color_means_no_escape_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    model_says = "a **bold** claim \x1b[31mred\x1b[0m and a bell\x07"
    backend = FakeBackend(reply=lambda m: model_says, interrupt_after=None)
    keys = (f"hi{ENTER}/set temperature -1{ENTER}/show{ENTER}/hlep{ENTER}/stats{ENTER}"
            f"/save {tmp_path / 'x.json'}{ENTER}{CTRL_C}/exit{ENTER}")
    _, text = run(keys, backend, force_terminal=True)
    assert ESC not in text and "\x07" not in text
    assert sanitize(model_says) in text


def test_model_control_codes_are_made_visible() -> None:
    assert sanitize("a\x1b[2Jb\rc\x07\td\n") == "a^[[2Jbc^G\td\n"
    assert sanitize("\x9b31m") == "<0x9b>31m"


def test_plugin_repl_commands_are_merged() -> None:
    from pyllm import plugins

    seen: list[tuple[object, str]] = []

    class Shout:
        @plugins.hookimpl
        def register_repl_commands(self, register):  # type: ignore[no-untyped-def]
            register("shout", lambda session, arg: (seen.append((session, arg)),
                                                     session.echo(arg.upper())),
                     "Say it louder.", aliases=("yell",))
            register("help", lambda s, a: None, "A clash with a built-in: ignored.")

    with plugins.registered(Shout(), name="shout-plugin"):
        registry = build_registry()
        session, text = run(f"/shout hey you{ENTER}/yell x{ENTER}/help{ENTER}/exit{ENTER}",
                            registry=registry)
        completer = ReplCompleter(lambda: registry)
        names = [c.text for c in completer.get_completions(Document("/sh"), CompleteEvent())]
    assert [a for _, a in seen] == ["hey you", "x"] and seen[0][0] is session
    assert "HEY YOU" in text
    assert "Plugin commands:" in text and "Say it louder." in text
    assert registry.get("help").source == ""  # the built-in kept its name
    assert "shout" in names and "show" in names


def test_failing_plugin_command_is_reported() -> None:
    registry = build_registry(with_plugins=False)

    def boom(session: ChatSession, arg: str) -> None:
        raise RuntimeError("kaput")

    registry.register("boom", boom, "Fails.", source="test")
    backend = FakeBackend()
    _, text = run(f"/boom{ENTER}hi{ENTER}/exit{ENTER}", backend, registry=registry)
    assert "error: RuntimeError: kaput" in text and backend.calls


@pytest.mark.parametrize("line, expected", [
    ("/s", {"system", "set", "show", "save", "stats"}),
    ("/SE", {"set"}),
    ("/set temp", {"temperature"}),
    ("/set top_", {"top_k", "top_p"}),
    ("/set markdown o", {"on", "off"}),
    ("/show t", {"template"}),
    ("hello /se", set()),
])
def test_completion(line: str, expected: set[str]) -> None:
    completer = ReplCompleter(lambda: build_registry(with_plugins=False))
    got = {c.text for c in completer.get_completions(Document(line), CompleteEvent())}
    assert got == expected


def test_completion_of_file_names(tmp_path: Path) -> None:
    (tmp_path / "chat1.json").write_text("{}")
    completer = ReplCompleter(lambda: build_registry(with_plugins=False))
    doc = Document(f"/load {tmp_path}/ch")
    assert {c.text for c in completer.get_completions(doc, CompleteEvent())} == {"at1.json"}


def test_history_file_under_pyllm_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYLLM_HOME", str(tmp_path / "home"))
    path = history_path()
    assert path == tmp_path / "home" / "history" and path.parent.is_dir()


def test_script_mode_reads_lines() -> None:
    backend = FakeBackend()
    out = Recorder()
    session = ChatSession(backend, stdout=out)
    session.run_script(['first\n', '"""two\n', 'lines"""\n', '/exit\n', 'never\n'])
    assert [c[0][-1]["content"] for c in backend.calls] == ["first", "two\nlines"]


def test_conversation_turns_and_plain_list_files(tmp_path: Path) -> None:
    path = tmp_path / "openai.json"
    path.write_text(json.dumps([{"role": "system", "content": "s"},
                                {"role": "user", "content": "u"},
                                {"role": "assistant", "content": "a"}]))
    conversation, _ = Conversation.read_file(path)
    assert conversation.system == "s"
    assert conversation.for_model() == json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------
# LLMBackend and `pyllm chat` over a stub LLM (the real model is in test_repl_e2e.py)
# ------------------------------------------------------------------------------------------------


class StubTokenizer:
    """One token per character (its code point)."""

    def encode(self, text: str, *, add_bos: bool | None = None,
               parse_special: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def token_bytes(self, i: int) -> bytes:
        return chr(i).encode("utf-8")

    def id_to_piece(self, i: int) -> str:
        return chr(i)


class StubLLM:
    """What LLMBackend uses of pyllm.api.LLM: name, context_length, tokenizer, chat_template,
    encode_prompt, stream."""

    name = "stub-llm"
    context_length = 4096

    def __init__(self) -> None:
        from pyllm.chat import ChatTemplate

        self.tokenizer = StubTokenizer()
        self.chat_template = ChatTemplate(None)
        self.closed = False
        self.seen: list[tuple[list[dict[str, str]], SamplingParams]] = []

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.encode(self.chat_template.render(messages))

    def stream(self, messages: list[dict[str, str]], params: SamplingParams):  # type: ignore
        self.seen.append((messages, params))
        try:
            yield from ["Hel", "", "lo", " wor", "ld"]
        finally:
            self.closed = True


def test_llm_backend_adapts_the_api() -> None:
    from pyllm.repl.backend import LLMBackend

    llm = StubLLM()
    backend = LLMBackend(llm)
    assert isinstance(backend, ChatBackend)
    assert (backend.model_name, backend.context_length) == ("stub-llm", 4096)
    assert backend.device is None  # the stub has no model; a loaded LLM's model says where it runs
    # as torch.device reads
    cpu = type("Device", (), {"type": "cpu", "__str__": lambda self: "cpu"})()
    llm.model = type("Model", (), {"device": cpu})()
    assert LLMBackend(llm).device == "cpu"
    assert backend.chat_template == llm.chat_template.source
    messages = [{"role": "user", "content": "hi"}]
    assert backend.count_tokens(messages) == len(llm.chat_template.render(messages))
    assert backend.tokenize("ab") == ([97, 98], ["a", "b"])
    deltas = list(backend.stream_reply(messages, SamplingParams()))
    assert deltas == ["Hel", "lo", " wor", "ld"]  # empty deltas are skipped
    stats = backend.last_stats
    assert stats.tokens == len("Hello world") and stats.ttft is not None
    assert stats.prompt_tokens == backend.count_tokens(messages)
    # stopping early closes the API's stream (the engine cancels the request there)
    llm.closed = False
    stream = backend.stream_reply(messages, SamplingParams())
    assert next(stream) == "Hel"
    stream.close()
    assert llm.closed and backend.last_stats.tokens == len("Hel")


def test_pyllm_chat_command_reads_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    llm = StubLLM()
    loaded: list[tuple[str, dict[str, object]]] = []

    def fake_load(model: str, device: str = "cpu", *, context_length: int | None = None,
                  **options: object) -> StubLLM:
        loaded.append((model, {"context_length": context_length}))
        return llm

    monkeypatch.setattr("pyllm.api.load", fake_load)
    result = CliRunner().invoke(
        cli, ["chat", "some-model", "--system", "be nice", "--temperature", "0.5", "--seed", "7",
              "--set", "typical_p=0.9", "--ctx", "2048", "--device", "cpu"],
        input="hi there\n/show\n", standalone_mode=False)
    assert result.exception is None, result.output
    assert loaded == [("some-model", {"context_length": 2048})]
    messages, params = llm.seen[0]
    assert messages == [{"role": "system", "content": "be nice"},
                        {"role": "user", "content": "hi there"}]
    assert (params.temperature, params.seed, params.typical_p) == (0.5, 7, 0.9)
    assert "Hello world" in result.output and "typical_p=0.9" in result.output


def test_pyllm_chat_bad_option_names_the_field() -> None:
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    result = CliRunner().invoke(cli, ["chat", "--top-p", "3"])
    assert result.exit_code == 2
    assert "top_p" in result.output and "(0, 1]" in result.output


# ------------------------------------------------------------------------------------------------
# ollama's spellings, /show info and system, wrapping, n
# ------------------------------------------------------------------------------------------------


class TemplateBackend(FakeBackend):
    """A FakeBackend whose chat template adds a system prompt by itself, with /show info rows."""

    template_system_prompt = "You are a helpful AI assistant named SmolLM"

    def info(self) -> list[tuple[str, str]]:
        return [("model", self.model_name), ("architecture", "llama, 30 layers")]


def test_set_system_and_set_parameter_as_in_ollama() -> None:
    session, out = run(f"/set system Answer in French.{ENTER}/set parameter temperature 0.3{ENTER}"
                       f"/set parameter top_k 5{ENTER}/set parameter{ENTER}hi{ENTER}")
    assert session.conversation.system == "Answer in French."
    assert (session.params.temperature, session.params.top_k) == (0.3, 5)
    assert "usage: /set parameter NAME VALUE" in out
    messages, _ = session.backend.calls[0]
    assert messages[0] == {"role": "system", "content": "Answer in French."}


def test_set_n_above_1_is_refused_and_chat_goes_on() -> None:
    session, out = run(f"/set n 3{ENTER}hi{ENTER}")
    assert "n = 3: the chat shows one reply per message" in out
    assert session.params.n == 1
    assert len(session.backend.calls) == 1 and "You said" in out
    session, out = run(f"/set n 1{ENTER}")
    assert "error" not in out and session.params.n == 1


def test_show_system_and_info_include_what_the_template_adds() -> None:
    _, out = run(f"/show system{ENTER}/show{ENTER}/show info{ENTER}/system{ENTER}",
                 TemplateBackend(), width=200)
    shown = [line for line in out.splitlines() if "named SmolLM" in line]
    assert len(shown) == 3 and all("added by the chat template" in line for line in shown)
    assert re.search(r"^  system +You are a helpful AI assistant named SmolLM", out, re.M)
    assert re.search(r"^  architecture +llama, 30 layers$", out, re.M)
    _, out = run(f"/set system Be terse.{ENTER}/show system{ENTER}", TemplateBackend())
    assert out.splitlines()[-1] == "Be terse."
    _, out = run(f"/show system{ENTER}")  # a template without one
    assert out.splitlines()[-1] == "(none)"


def test_llm_backend_finds_the_template_system_prompt() -> None:
    from pyllm.chat import ChatTemplate
    from pyllm.repl.backend import LLMBackend

    llm = StubLLM()
    llm.chat_template = ChatTemplate(
        "{% if messages[0].role != 'system' %}<s>system: Default helper.</s>{% endif %}"
        "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}")
    assert LLMBackend(llm).template_system_prompt == "Default helper."
    llm.chat_template = ChatTemplate("{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>"
                                     "{% endfor %}")
    assert LLMBackend(llm).template_system_prompt is None


def test_streamed_reply_wraps_between_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a 24-column terminal no word is cut across two lines, whatever the deltas."""
    monkeypatch.setenv("NO_COLOR", "1")
    words = ["The", "fierce", "wind", "blew", "across", "Augustus", "and", "his",
             "extraordinarily", "long", "caravan"]
    reply = " ".join(words)
    _, out = run(f"hi{ENTER}", FakeBackend(reply=lambda m: reply), force_terminal=True,
                 width=24, markdown=False)
    lines = out.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("The")):]
    body = [line for line in body if line.strip()]
    assert " ".join(" ".join(body).split()) == reply
    assert all(len(line) <= 24 for line in body), body
    assert set(" ".join(body).split()) == set(words)


def test_word_wrapper_keeps_words_whole() -> None:
    from pyllm.repl.render import WordWrapper

    wrapper = WordWrapper(10)
    text = "".join(wrapper.feed(piece) for piece in ["The fi", "erce w", "ind\nis ", "co", "ld"])
    text += wrapper.flush()
    assert text == "The fierce\nwind\nis cold"
    wrapper = WordWrapper(5)
    # too wide for a line: written whole (the terminal breaks it), the next word goes on after
    assert wrapper.feed("abcdefgh ij") + wrapper.flush() == "abcdefgh \nij"


def test_show_rows_wrap_with_a_hanging_indent() -> None:
    _, out = run(f"/show{ENTER}", TemplateBackend(), width=50)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  system"))
    assert lines[at].startswith("  system    You are a helpful")
    rest = lines[at + 1:at + 3]
    assert all(line.startswith(" " * 12) and line[12] != " " and len(line) < 50 for line in rest)
    assert lines[at + 3].startswith("  messages")
    words = " ".join(line.strip() for line in lines[at:at + 3]).split()
    assert words[1:6] == ["You", "are", "a", "helpful", "AI"] and "SmolLM" in words


def test_help_wraps_with_a_hanging_indent() -> None:
    _, out = run(f"/help{ENTER}", width=60, force_terminal=False)
    lines = out.splitlines()
    lines = lines[lines.index("Commands:"):]
    start = next(i for i, line in enumerate(lines) if line.startswith("  /set"))
    assert all(len(line) <= 60 for line in lines), [x for x in lines if len(x) > 60]
    column = lines[start].index("Set a sampling")
    continued = lines[start + 1]
    assert continued.startswith(" " * column) and continued[column] != " "


def test_lost_characters_are_told_once_per_turn(smollm2_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A turn encodes its conversation several times (fitting it in the context, counting the
    prompt, generating, counting for the toolbar): the tokenizer's warning comes once."""
    import pyllm
    from pyllm.repl.backend import LLMBackend

    backend = LLMBackend(pyllm.load(smollm2_path, progress=False))
    session = ChatSession(backend, params=SamplingParams(max_tokens=2, temperature=0),
                          input=None, output=DummyOutput(), stdout=Recorder())
    with caplog.at_level("WARNING", logger="pyllm.tokenizer"):
        session.send("a\x04b")
        assert len([r for r in caplog.records if r.name == "pyllm.tokenizer"]) == 1
        session.regenerate()
        assert len([r for r in caplog.records if r.name == "pyllm.tokenizer"]) == 2
