"""Structured output (pyllm/constraints): every finished output of a constrained request parses
and validates, on a random-weight model (it has no idea what JSON is, so only the constraint
keeps it in shape) and on the default model; errors come when the request is made.

Schemas are checked with the `jsonschema` library, an implementation independent of llguidance.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from tiny_chat import write_tiny_chat_model

import pyllm
from pyllm import SamplingParams
from pyllm.hookspecs import hookimpl

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "user": {"type": "object",
                     "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                             "minItems": 1, "maxItems": 3}},
                     "required": ["id", "tags"], "additionalProperties": False},
        },
        "required": ["user"], "additionalProperties": False,
    },
    "array_bounds": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                     "minItems": 2, "maxItems": 4},
    "enum_and_optional": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]},
                       "shade": {"type": "number", "minimum": 0, "maximum": 1},
                       "note": {"type": "string", "maxLength": 6}},
        "required": ["color"], "additionalProperties": False,
    },
    "pattern": {"type": "object",
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                               "ok": {"type": "boolean"}},
                "required": ["code", "ok"], "additionalProperties": False},
    "ref": {
        "$defs": {"point": {"type": "object",
                            "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                           "y": {"type": "integer", "minimum": 0, "maximum": 9}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"], "additionalProperties": False,
    },
}
SEEDS = range(6)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, smollm2_path):
    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model.gguf", smollm2_path)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return pyllm.load(tiny_path, progress=False)


def _check_finished(results, validate):
    """Every output that finished ("stop") validates; cut ones are flagged incomplete. Returns
    how many finished."""
    finished = 0
    for r in results:
        c = r.outputs[0]
        if c.finish_reason == "stop":
            assert not c.incomplete
            validate(c.text)
            finished += 1
        else:
            assert c.finish_reason == "length" and c.incomplete
    return finished


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_model_outputs_validate(tiny, name):
    schema = SCHEMAS[name]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=80, json_schema=schema)
              for s in SEEDS]
    results = tiny.generate(["Answer in JSON."] * len(params), params)
    finished = _check_finished(results, lambda t: jsonschema.validate(json.loads(t), schema))
    assert finished >= len(params) // 2  # bounded strings and numbers: most end in 80 tokens


@pytest.mark.parametrize("kwargs,check", [
    (dict(regex=r"[a-z]{3}-[0-9]{2}"), lambda t: re.fullmatch(r"[a-z]{3}-[0-9]{2}", t)),
    (dict(choice=["red", "green", "blue"]), lambda t: t in ("red", "green", "blue")),
    (dict(grammar='start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,3}/'),
     lambda t: re.fullmatch(r"\((\d{1,3})(,\d{1,3})*\)", t)),
    (dict(json_object=True), lambda t: isinstance(json.loads(t), dict)),
])
def test_other_kinds(tiny, kwargs, check):
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=40, **kwargs) for s in SEEDS]
    results = tiny.generate(["x"] * len(params), params)

    def validate(text):
        assert check(text), text

    finished = _check_finished(results, validate)
    if "json_object" not in kwargs:  # `{}` ends it; a random model rarely closes a string
        assert finished == len(params)


def test_choice_covers_the_options_at_high_temperature(tiny):
    params = [SamplingParams(temperature=5.0, seed=s, choice=["yes", "no", "maybe"]) for s in range(20)]
    texts = {r.text for r in tiny.generate(["?"] * 20, params)}
    assert texts == {"yes", "no", "maybe"}


def test_cut_by_max_tokens_is_length_and_incomplete(tiny):
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 30}},
              "required": ["s"]}
    r = tiny.generate(["x"], SamplingParams(temperature=1.0, seed=1, max_tokens=5, json_schema=schema))[0]
    assert r.finish_reason == "length" and r.outputs[0].incomplete
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


@pytest.mark.parametrize("kwargs,message", [
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 3}), "unsatisfiable|Unsatisfiable"),
    (dict(json_schema={"type": "nope"}), "json_schema"),
    (dict(json_schema='{"type": '), "not valid JSON"),
    (dict(regex="(ab"), "regex"),
    (dict(grammar="start: undefined_rule"), "grammar"),
    (dict(constraint=("no_such_kind", "x")), "unknown constraint kind 'no_such_kind'"),
])
def test_bad_constraints_fail_when_the_request_is_made(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.generate(["x"], SamplingParams(max_tokens=5, **kwargs))


def test_check_request_refuses_a_bad_constraint(tiny):
    """Every door (generate jobs, the server, run_all) checks requests with check_request first:
    a bad record becomes that record's error, not the whole job's."""
    with tiny.engine.exclusive() as engine:
        with pytest.raises(ValueError, match="regex"):
            engine.check_request([1, 2], SamplingParams(regex="("))
        engine.check_request([1, 2], SamplingParams(regex="a+"))


def test_one_constraint_at_a_time():
    with pytest.raises(ValueError, match="one constraint at a time"):
        SamplingParams(regex="a+", choice=["a"])
    with pytest.raises(ValueError, match="SamplingParams.choice"):
        SamplingParams(choice="abc")


def test_seeded_constrained_sampling_is_the_same_alone_and_in_a_batch(tiny):
    schema = SCHEMAS["enum_and_optional"]
    mine = SamplingParams(temperature=1.0, seed=42, max_tokens=40, json_schema=schema)
    alone = tiny.generate(["Colour?"], mine)[0]
    others = [SamplingParams(temperature=1.0, seed=s, max_tokens=30, regex="[0-9]+")
              for s in range(3)] + [SamplingParams(temperature=0.8, seed=7, max_tokens=30)]
    batch = tiny.generate(["a", "Colour?", "b", "c", "d"], [others[0], mine, *others[1:]])
    assert batch[1].token_ids == alone.token_ids


def test_n_completions_each_follow_the_constraint(tiny):
    r = tiny.generate(["x"], SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=40,
                                          json_schema=SCHEMAS["array_bounds"]))[0]
    assert len(r.outputs) == 3
    for c in r.outputs:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.text), SCHEMAS["array_bounds"])


class YesNoPlugin:
    @hookimpl
    def register_constraints(self, register):
        register("yes_no", lambda spec: 'start: "yes" | "no"')


def test_a_plugin_registers_a_constraint_kind(tiny):
    with pyllm.plugins.registered(YesNoPlugin()):
        assert {"yes_no", "json_schema", "regex"} <= set(pyllm.plugins.constraints())
        results = tiny.generate(["?"] * 4, [SamplingParams(temperature=1.0, seed=s,
                                                           constraint=("yes_no", ""))
                                           for s in range(4)])
    assert {r.text for r in results} <= {"yes", "no"}


def test_jsonl_record_fields_build_the_constraint():
    p = SamplingParams.from_mapping({"json_schema": {"type": "object"}, "max_tokens": "7"})
    assert json.loads(p.json_schema) == {"type": "object"}
    assert SamplingParams.from_mapping({"choice": "a, b,c"}).choice == ("a", "b", "c")
    assert SamplingParams.from_mapping({"regex": "12"}).regex == "12"  # text, not a number


def test_default_model_json_validates(smollm2_path):
    llm = pyllm.load(smollm2_path, progress=False)
    schema = {"type": "object",
              "properties": {"city": {"type": "string", "maxLength": 20},
                             "population": {"type": "integer", "minimum": 0}},
              "required": ["city", "population"], "additionalProperties": False}
    prompt = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
    results = llm.generate([prompt] * 2, [SamplingParams(temperature=1.0, seed=s, max_tokens=40,
                                                         json_schema=schema) for s in (1, 2)])
    for r in results:
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), schema)


def test_classify_generate_writes_one_of_the_labels(tiny):
    """`classify --generate`: a constrained label instead of scores, even from random weights."""
    from pyllm.tasks import get

    labels = ["sport", "politics", "science and technology"]
    texts = ["The match ended 3-1.", "Parliament passed the budget.", "A new chip was shown.",
             "It rained."]
    out = get("classify").run(tiny, [{"text": t} for t in texts], labels=labels, generate=True)
    assert len(out) == len(texts)
    assert all(set(r) == {"label"} and r["label"] in labels for r in out)


def test_repl_set_format_and_schema(tmp_path):
    import io

    from fake_backend import FakeBackend

    from pyllm.repl.session import ChatSession

    backend = FakeBackend()
    schema_file = tmp_path / "s.json"
    schema_file.write_text('{"type": "object", "properties": {"a": {"type": "integer"}}}')
    session = ChatSession(backend, stdout=io.StringIO())
    session.run_script(["/set format json\n", "hi\n", f"/set schema {schema_file}\n", "again\n",
                        "/set format off\n", "plain\n", "/set schema /no/such/file\n", "/exit\n"])
    (_, p1), (_, p2), (_, p3) = backend.calls
    assert p1.json_object and p1.json_schema is None
    assert json.loads(p2.json_schema) == json.loads(schema_file.read_text()) and not p2.json_object
    assert not p3.json_object and p3.json_schema is None


def test_cli_structured_flags(tiny_path, tmp_path):
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    path = str(tiny_path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMAS["array_bounds"]))
    res = CliRunner().invoke(cli, ["run", path, "x", "--schema", str(schema), "--set", "seed=1",
                                   "--max-tokens", "60", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output)
    if record["finish_reason"] == "stop":
        jsonschema.validate(json.loads(record["text"]), SCHEMAS["array_bounds"])
    res = CliRunner().invoke(cli, ["run", path, "x", "--choice", "up,down", "--json",
                                   "--device", "cpu"])
    assert json.loads(res.output)["text"] in ("up", "down")
    res = CliRunner().invoke(cli, ["run", path, "x", "--regex", "a", "--choice", "b"])
    assert res.exit_code != 0 and "one constraint at a time" in res.output


def test_extractive_qa_answers_with_the_phrase_not_the_sentence(smollm2_path):
    """Greedy span decoding copied the context until a sentence ended ("How tall is it?" got the
    sentence about who built the tower); spans ranked as complete answers give the phrase."""
    from pyllm.tasks import get

    llm = pyllm.load(smollm2_path, progress=False)
    tower = ("The Eiffel Tower was built by the company of Gustave Eiffel and opened in 1889. "
             "It stands in Paris, on the Champ de Mars, and is 330 metres tall.")
    curie = ("Marie Curie was a physicist and chemist who conducted pioneering research on "
             "radioactivity. She was born in Warsaw in 1867 and died in 1934 in Passy, France, "
             "of aplastic anaemia.")
    out = get("qa").run(llm, [{"context": tower, "question": "How tall is it?"},
                              {"context": curie, "question": "When did she die?"}],
                        extractive=True)
    for res, ctx, fact in zip(out, (tower, curie), ("330", "1934")):
        assert ctx[res["start"]:res["end"]] == res["answer"]
        assert fact in res["answer"] and len(res["answer"]) <= 20, res


def test_generate_job_records_carry_their_constraint(tiny_path, tmp_path):
    """`pyllm generate`: constraint fields per JSONL record; a bad one is that record's error."""
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    schema = SCHEMAS["array_bounds"]
    records = [{"id": "a", "prompt": "x", "json_schema": schema, "seed": 1, "max_tokens": 60},
               {"id": "b", "prompt": "y", "choice": ["up", "down"], "seed": 2},
               {"id": "c", "prompt": "z", "regex": "(", "seed": 3},
               {"id": "d", "prompt": "w", "json_schema": SCHEMAS["nested"], "max_tokens": 3}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = CliRunner().invoke(cli, ["generate", "-m", str(tiny_path), "-i", str(src), "-o", str(dst),
                                   "--device", "cpu"])
    out = {r["id"]: r for r in map(json.loads, dst.read_text().splitlines())}
    assert set(out) == {"a", "b", "c", "d"}, res.output
    if out["a"]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(out["a"]["text"]), schema)
    else:
        assert out["a"]["incomplete"] is True
    assert out["b"]["text"] in ("up", "down")
    assert out["c"]["error"]["type"] == "invalid_record" and "regex" in out["c"]["error"]["message"]
    assert out["d"]["finish_reason"] == "length" and out["d"]["incomplete"] is True
    assert "incomplete" not in out["b"]


def test_cli_says_when_structured_output_is_cut(tiny_path):
    """A constrained reply cut by --max-tokens is printed as it is, with a warning on stderr that
    it will not parse (and "incomplete": true with --json)."""
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    args = ["run", str(tiny_path), "x", "--format", "json", "--max-tokens", "2", "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "will not parse" in res.stderr and "will not parse" not in res.stdout
    res = CliRunner().invoke(cli, [*args, "--json"])
    assert json.loads(res.stdout)["incomplete"] is True
