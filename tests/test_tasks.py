"""The task adapters (classify, qa, translate), their helpers, CLI, JSONL jobs, REPL commands and
a third-party task. Model-backed tests use the default model with tiny inputs."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import pyllm
import pyllm.tasks as tasks
from pyllm import plugins
from pyllm.hookspecs import hookimpl
from pyllm.types import TaskAdapter
from pyllm_tasks.classify import CONTENT_FREE, calibrate_probs, read_labels, softmax
from pyllm_tasks.extractive import SpanConstraint
from pyllm_tasks.sentences import chunk_sentences, split_sentences
from pyllm_tasks.translate import language_name

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["positive", "negative"]
TEXT = "I loved this film, it was wonderful."
CONTEXT = ("The Eiffel Tower was built by the company of Gustave Eiffel and opened in 1889. "
           "It stands in Paris, on the Champ de Mars, and is 330 metres tall.")


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pyllm.load(smollm2_path)


# ---------------------------------------------------------------------- pure helpers


def test_calibration_matches_the_formula():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 6)
        p = softmax([rng.uniform(-5, 5) for _ in range(n)])
        cfs = [softmax([rng.uniform(-5, 5) for _ in range(n)]) for _ in range(3)]
        mean_cf = [sum(c[i] for c in cfs) / 3 for i in range(n)]
        w = [p[i] / mean_cf[i] for i in range(n)]  # diag(p_cf)^-1 p, then renormalised
        assert calibrate_probs(p, cfs) == pytest.approx([x / sum(w) for x in w], rel=1e-9)
    # an input that looks exactly like the content-free ones carries no information
    assert calibrate_probs([0.9, 0.1], [[0.9, 0.1]]) == pytest.approx([0.5, 0.5])
    # a model that says "A" to anything: a weaker "A" than usual becomes "B"
    assert calibrate_probs([0.7, 0.3], [[0.95, 0.05], [0.85, 0.15]])[1] > 0.5
    assert calibrate_probs([0.2, 0.8], []) == [0.2, 0.8]


def test_read_labels(tmp_path):
    assert read_labels("a, b ,c") == ["a", "b", "c"]
    assert read_labels(["x", "y"]) == ["x", "y"]
    f = tmp_path / "labels.txt"
    f.write_text("# topics\nsport\n\npolitics\n")
    assert read_labels(f) == ["sport", "politics"]
    for bad in ("a,a", "a,,b", "solo"):
        with pytest.raises(ValueError):
            read_labels(bad)


fragments = st.sampled_from(["Hello there", "Mr. Smith", "e.g. this", "J. Doe", "It works",
                             "3 apples", "ça va", "Où est-il", "日本語です", "x", ""])
ends = st.sampled_from([".", "!", "?", "...", "。", "", ".\"", ")"])
seps = st.sampled_from([" ", "  ", "\n", "\n\n", " \n ", "\t", ""])


@settings(max_examples=60)
@given(st.lists(st.tuples(fragments, ends, seps), max_size=12), st.integers(1, 12))
def test_sentences_split_and_rejoin_exactly(parts, budget):
    text = "".join(a + b + c for a, b, c in parts)
    pairs = split_sentences(text)
    assert "".join(s + sep for s, sep in pairs) == text
    assert all(not sep.strip() for _, sep in pairs)  # separators are whitespace only
    chunks = chunk_sentences(pairs, lambda s: len(s.split()), budget)
    assert "".join(c + sep for c, sep in chunks) == text
    for c, _ in chunks:
        assert "\n" not in c  # never across a line break
    sentence_words = {s: len(s.split()) for s, _ in pairs}
    for c, _ in chunks:
        assert len(c.split()) <= budget or c in sentence_words  # only a lone long sentence


def test_sentence_boundaries():
    text = "Mr. Smith went to Washington. He met Dr. J. Doe there! Did it rain? Yes."
    assert [s for s, _ in split_sentences(text)] == [
        "Mr. Smith went to Washington.", "He met Dr. J. Doe there!", "Did it rain?", "Yes."]


def test_language_names():
    assert language_name("fr") == "French"
    assert language_name("pt-BR") == "Portuguese"
    assert language_name("german") == "German"
    assert language_name("Klingon") == "Klingon"
    assert language_name(None) is None and language_name("auto") is None
    with pytest.raises(ValueError, match="unknown language code"):
        language_name("xq")


# ---------------------------------------------------------------------- extractive spans


@settings(max_examples=25)
@given(st.data())
def test_span_constraint_offsets(llm, data):
    """Any run of the context's tokens fed through the constraint (optionally starting with
    the first token's space-less twin) gives offsets whose text is that run's text."""
    tok = llm.tokenizer
    context = data.draw(st.sampled_from([CONTEXT, "Café crème à 3 € — naïve façade, 日本の首都は東京です。"]))
    cons = SpanConstraint(tok, context, sorted(tok.eos_ids))
    n = len(cons.ids)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(i + 1, min(n, i + 8)))
    run = cons.ids[i:j]
    first = run[0]
    bare = [t for t, cands in cons.first.items()  # token i without its leading space
            if t != first and any(k == i + 1 and s > cons.starts[i] for s, k in cands)]
    if bare and data.draw(st.booleans()):
        first = bare[0]
    assert first in cons.allowed()
    done = cons.advance(first)
    for t in run[1:]:
        assert not done and t in cons.allowed()
        done = cons.advance(t)
    if not done:
        assert set(tok.eos_ids) <= set(cons.allowed())
    span = cons.span(0.0)
    assert context[span.start:span.end] == span.text
    piece = b"".join(tok.token_bytes(t) for t in run).decode("utf-8", "ignore").strip()
    if piece:
        assert piece in span.text or span.text in piece
        assert span.text.strip() == span.text and span.text


# ---------------------------------------------------------------------- adapters on the model


def test_registered_tasks():
    assert {"classify", "qa", "translate"} <= set(tasks.names())
    adapter = tasks.get("classify")
    assert isinstance(adapter, TaskAdapter)
    with pytest.raises(KeyError, match="no task named"):
        tasks.get("nope")


def test_classify_calibrated_is_calibration_of_raw(llm):
    raw = tasks.run(llm, "classify", TEXT, labels=LABELS, calibrate=False)
    cal = llm.run_task("classify", TEXT, labels=LABELS)
    for res in (raw, cal):
        assert set(res["scores"]) == set(LABELS)
        assert sum(res["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert res["label"] == max(res["scores"], key=res["scores"].get)
    adapter = tasks.get("classify")
    cf = adapter.content_free_probs(llm, LABELS, (), False, False)
    assert len(cf) == len(CONTENT_FREE)
    expected = calibrate_probs([raw["scores"][lab] for lab in LABELS], cf)
    assert [cal["scores"][lab] for lab in LABELS] == pytest.approx(expected, abs=1e-5)


def test_classify_few_shot_and_multi_label(llm):
    res = tasks.run(llm, "classify", [TEXT], labels=LABELS,
                    examples=[("Great fun!", "positive"), ("Dull.", "negative")])
    assert len(res) == 1 and res[0]["label"] in LABELS
    with pytest.raises(ValueError, match="not one of the labels"):
        tasks.run(llm, "classify", TEXT, labels=LABELS, examples=[("x", "neutral")])
    multi = tasks.run(llm, "classify", TEXT, labels=LABELS, multi_label=True, threshold=0.4)
    assert all(0.0 <= p <= 1.0 for p in multi["scores"].values())
    assert multi["labels"] == [lab for lab in LABELS if multi["scores"][lab] >= 0.4]


def test_extractive_answer_is_a_span_of_the_context(llm):
    res = tasks.run(llm, "qa", {"context": CONTEXT, "question": "Who built the Eiffel Tower?"},
                    extractive=True, max_tokens=12)
    assert res["answer"]
    assert CONTEXT[res["start"]:res["end"]] == res["answer"]
    free = tasks.run(llm, "qa", {"context": CONTEXT, "question": "How tall is it?"},
                     max_tokens=8)
    assert isinstance(free["answer"], str) and free["answer"]


def test_translate_keeps_the_layout(llm):
    text = "Good morning.\n\nThank you."
    out = tasks.run(llm, "translate", text, src="en", tgt="fr", max_chunk_tokens=8)["translation"]
    first, sep, second = out.partition("\n\n")
    assert sep and first.strip() and second.strip() and "\n" not in first + second


# ---------------------------------------------------------------------- CLI, JSONL, REPL


@pytest.fixture
def cli(llm, monkeypatch):
    import pyllm.cli_options as support

    loads = []  # the load options each command passed

    def load_llm(model, device="auto", **options):
        loads.append({"device": device, **options})
        return llm  # loaded once for the module

    monkeypatch.setattr(support, "load_llm", load_llm)
    from pyllm.cli.main import cli as group

    def invoke(*args: str, code: int = 0, input: str | None = None):
        result = CliRunner().invoke(group, list(args), catch_exceptions=False, input=input)
        assert result.exit_code == code, result.output
        return result.output

    invoke.loads = loads

    return invoke


def test_cli_json_outputs(cli):
    res = json.loads(cli("classify", "--labels", ",".join(LABELS), "--json", TEXT))
    assert res["label"] in LABELS and set(res["scores"]) == set(LABELS)
    res = json.loads(cli("qa", "--context", CONTEXT, "--question", "When did it open?",
                         "--extractive", "--max-tokens", "8", "--json"))
    assert CONTEXT[res["start"]:res["end"]] == res["answer"]
    res = json.loads(cli("translate", "--from", "en", "--to", "fr", "--json", "Thank you."))
    assert isinstance(res["translation"], str) and res["translation"]


def test_cli_jsonl_and_eval(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": TEXT, "label": "positive"}) + "\n"
                   + "not json\n"
                   + json.dumps({"id": "b", "text": "Terrible.", "label": "negative"}) + "\n")
    out = tmp_path / "out.jsonl"
    report = cli("classify", "--labels", ",".join(LABELS), "-i", str(src), "-o", str(out),
                 "--eval", "--json", code=3)  # the "not json" line failed
    metrics = json.loads(report.strip().splitlines()[-1])
    assert metrics["n"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x.get("id") for x in lines if "error" not in x] == ["a", "b"]
    assert [x["error"]["type"] for x in lines if "error" in x] == ["invalid_json"]
    assert all(set(x) == {"id", "label", "scores"} for x in lines if "error" not in x)


def test_builtin_commands_read_standard_input_and_take_the_load_options(cli, tmp_path):
    out = tmp_path / "out.jsonl"
    cli("classify", "--labels", ",".join(LABELS), "-i", "-", "-o", str(out), "--int8",
        "--kv-dtype", "float16", "--ctx", "256", input=json.dumps({"id": "a", "text": TEXT}))
    assert cli.loads == [{"device": "auto", "int8": True, "kv_dtype": "float16", "ctx": 256}]
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"]


@pytest.mark.parametrize("command", ["classify", "qa", "translate", "keywords"])
def test_task_commands_share_the_job_and_load_options(command, task_plugin):
    text = " ".join(invoke(command, "--help").stdout.split())
    for option in ("--retry-errors", "--int8", "--kv-dtype", "--device", "--ctx",
                   "(- for standard input)", "3 some records failed in this run"):
        assert option in text, option


class Echo:
    """A model-free task, to test the job rules fast."""

    name = "echo-test"
    description = "upper-cases text; refuses 'bad'"
    input_fields = ("text",)

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, llm, records, **options):
        texts = [r["text"] for r in records]
        self.calls.append(texts)
        if "bad" in texts:
            raise ValueError("bad text")
        return [{"out": t.upper() + options.get("suffix", "")} for t in texts]


def test_run_jsonl_rules_and_resume(tmp_path):
    echo = Echo()
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": "1", "text": "a"}, {"id": "2", "text": "bad"}, {"id": "3", "text": "c"},
            {"id": "3", "text": "dup"}, {"text": "no id"}, {"id": "5", "other": 1}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = tasks.run_jsonl(echo, None, src, out, {"suffix": "!"}, batch_size=4)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    good = {x["id"]: x["out"] for x in lines if "error" not in x}
    errors = sorted(x["error"]["type"] for x in lines if "error" in x)
    assert good == {"1": "A!", "3": "C!"}
    assert errors == ["duplicate_id", "invalid_record", "invalid_record", "missing_id"]
    assert (s.completed, s.errors, s.total) == (2, 4, 6)
    # a re-run with one more record runs only that one
    with open(src, "a") as f:
        f.write(json.dumps({"id": "7", "text": "g"}) + "\n")
    with open(out, "a") as f:
        f.write('{"id": "torn')  # a kill mid-write
    echo.calls.clear()
    s = tasks.run_jsonl(echo, None, src, out, {}, batch_size=4)
    assert echo.calls == [["g"]] and (s.completed, s.skipped) == (1, 6)
    assert sum(1 for x in out.read_text().splitlines() if json.loads(x).get("id") == "7") == 1


def test_repl_commands(llm):
    registered = plugins.repl_commands()
    assert {"classify", "qa", "translate"} <= set(registered)
    said: list[str] = []
    session = SimpleNamespace(llm=llm, echo=said.append, notice=said.append,
                              error=lambda m: said.append("ERROR " + m),
                              conversation=SimpleNamespace(messages=[
                                  {"role": "assistant", "content": CONTEXT}]))
    registered["classify"].handler(session, f"{','.join(LABELS)} {TEXT}")
    assert said[0] in LABELS and len(said) == 3
    said.clear()
    registered["qa"].handler(session, "--extractive When did it open?")
    assert said and not said[0].startswith("ERROR") and said[0] in CONTEXT
    said.clear()
    registered["classify"].handler(session, "onlylabels")
    assert said[0].startswith("ERROR usage")


def test_third_party_task_from_the_example_plugin(llm, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "example_plugin"))
    sys.modules.pop("pyllm_example", None)
    import pyllm_example

    with plugins.registered(pyllm_example, name="example"):
        assert "sentiment" in tasks.names()
        out = tasks.get("sentiment").run(llm, [{"text": TEXT}])
        assert out[0]["sentiment"] in LABELS and 0.0 <= out[0]["positive"] <= 1.0
    assert "sentiment" not in tasks.names()


# ---------------------------------------------------------------------- tasks from any plugin


class Keywords:
    """A model-free third-party task: the longest words of a text."""

    name = "keywords"
    description = "The longest words of a text (a test plugin's task)."
    input_fields = ("text",)

    def run(self, llm, records, *, top=2, **options):
        out = []
        for r in records:
            words = sorted(set(r["text"].replace(".", "").split()), key=lambda w: (-len(w), w))
            out.append({"keywords": ", ".join(words[:top])})
        return out


class Join:
    """A two-field task."""

    name = "join-test"
    description = "Joins two fields."
    input_fields = ("left", "right")

    def run(self, llm, records, sep="+", **options):
        return [{"joined": f"{r['left']}{sep}{r['right']}", "n": 2} for r in records]


class TaskPlugin:
    @hookimpl
    def register_tasks(self, register):
        register("keywords", Keywords())
        register("join-test", Join())


@pytest.fixture
def task_plugin(monkeypatch):
    import pyllm.cli_options as support

    loaded = []
    monkeypatch.setattr(support, "load_llm",
                        lambda model, device="auto", **options: loaded.append(model))
    with plugins.registered(TaskPlugin(), name="task-plugin"):
        yield loaded


def invoke(*args: str, input: str | None = None):
    from pyllm.cli.main import cli as group

    return CliRunner().invoke(group, list(args), input=input)


def test_a_plugin_task_gets_a_command(task_plugin, tmp_path):
    assert "keywords" in invoke("--help").stdout
    result = invoke("keywords", "-m", "some-model", "A fierce dragon sleeps.", "-O", "top=1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "dragon" and task_plugin == ["some-model"]
    result = invoke("keywords", "--json", input="a bb ccc\n")  # standard input when piped
    assert json.loads(result.stdout) == {"keywords": "ccc, bb"}
    result = invoke("join-test", "--left", "a", "--right", "b", "-O", 'sep="-"')
    assert json.loads(result.stdout) == {"joined": "a-b", "n": 2}
    result = invoke("join-test", "--left", "a")
    assert result.exit_code == 2 and "error: give --right TEXT, or -i IN.jsonl" in result.stderr
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "1", "text": "one three"}\n{"id": "2"}\n')
    result = invoke("keywords", "-i", str(src), "-o", str(out))
    assert result.exit_code == 3, result.output  # record "2" failed
    lines = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert lines["1"] == {"id": "1", "keywords": "three, one"} and "error" in lines["2"]


def test_a_plugin_task_gets_a_repl_command(task_plugin):
    from pyllm.repl.commands import build_registry

    registry = build_registry()
    said: list[str] = []
    session = SimpleNamespace(llm=object(), echo=said.append, error=lambda m: said.append("E " + m))
    registry.get("keywords").handler(session, "A fierce dragon sleeps.")
    registry.get("join-test").handler(session, 'left=x right="y z" sep=" & "')
    registry.get("join-test").handler(session, "left=x")
    assert said[:2] == ["dragon, fierce", '{"joined": "x & y z", "n": 2}']
    assert said[2].startswith("E /join-test: missing right")
    assert registry.get("classify").source != "task classify"  # the plugin's own /classify


def test_without_the_tasks_plugin_no_task_command_exists(monkeypatch):
    monkeypatch.setenv("PYLLM_PLUGINS", "tokenizers,samplers,sources")
    plugins.reset()
    try:
        from pyllm.repl.commands import build_registry

        assert tasks.names() == []
        help_text = invoke("--help").stdout
        assert "tokenize" in help_text and "classify" not in help_text
        result = invoke("classify", "hi", "--labels", "a,b")
        assert result.exit_code == 2 and "No such command 'classify'" in result.stderr
        listing = invoke("plugins")
        assert listing.exit_code == 0 and "tasks" not in listing.stdout
        assert build_registry().get("classify") is None and build_registry().get("help")
    finally:
        monkeypatch.delenv("PYLLM_PLUGINS")
        plugins.reset()


def test_run_jsonl_reads_standard_input(tmp_path, monkeypatch):
    import io

    data = b'{"id": "1", "text": "a"}\n{"id": "2", "text": "b"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    s = tasks.run_jsonl(Echo(), None, "-", tmp_path / "out.jsonl", {})
    assert (s.total, s.completed, s.errors) == (2, 2, 0)


def test_task_job_exit_status_and_retry_errors(task_plugin, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("keywords", "-i", "-", "-o", str(out),
                    input='{"id": "1", "text": "one three"}\n{"id": "2"}\n')
    assert result.exit_code == 3, result.output
    src = tmp_path / "in.jsonl"  # the input fixed: "2" has its text now
    src.write_text('{"id": "1", "text": "one three"}\n{"id": "2", "text": "two"}\n')
    result = invoke("keywords", "-i", str(src), "-o", str(out))
    assert result.exit_code == 0 and "--retry-errors runs them again" in result.stderr
    lines = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert "error" in lines["2"] and len(lines) == 2  # a failure counts as done
    result = invoke("keywords", "-i", str(src), "-o", str(out), "--retry-errors")
    assert result.exit_code == 0, result.output
    assert sorted(map(json.loads, out.read_text().splitlines()), key=lambda x: x["id"]) == [
        {"id": "1", "keywords": "three, one"}, {"id": "2", "keywords": "two"}]


def test_task_job_refuses_its_input_as_output(task_plugin, tmp_path):
    src, link = tmp_path / "in.jsonl", tmp_path / "link.jsonl"
    text = '{"id": "1", "text": "one three"}\n'
    src.write_text(text)
    link.symlink_to(src)
    for out in (src, link, tmp_path / "." / "in.jsonl"):
        result = invoke("keywords", "-i", str(src), "-o", str(out))
        assert result.exit_code == 2 and "are the same file" in result.stderr, result.output
    assert src.read_text() == text and task_plugin == []  # refused before the model loads


def test_generic_task_command_takes_the_load_options(task_plugin, monkeypatch):
    import pyllm.cli_options as support

    seen = []
    monkeypatch.setattr(support, "load_llm",
                        lambda model, device="auto", **options: seen.append((device, options)))
    result = invoke("keywords", "--int8", "--kv-dtype", "bfloat16", "--ctx", "64",
                    "--device", "cpu", "a bb")
    assert result.exit_code == 0, result.output
    assert seen == [("cpu", {"int8": True, "kv_dtype": "bfloat16", "ctx": 64})]
