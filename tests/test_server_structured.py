"""Structured output through `pyllm serve`: OpenAI's response_format and pyllm's own constraint
fields, through the official openai client, on a tiny random model (only the constraint keeps
its output in shape)."""

from __future__ import annotations

import json

import jsonschema
import pytest

openai = pytest.importorskip("openai")

from test_server import serving
from tiny_chat import write_tiny_chat_model

import pyllm

CHAT = [{"role": "user", "content": "Reply in JSON."}]
SCHEMA = {"type": "object",
          "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                         "ok": {"type": "boolean"}},
          "required": ["n", "ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(tmp_path_factory, smollm2_path):
    path = write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model.gguf", smollm2_path)
    with serving(pyllm.load(path, progress=False)) as server:
        yield server.client()


@pytest.mark.parametrize("strict", [True, False])
def test_response_format_json_schema(client, strict):
    for seed in range(3):
        r = client.chat.completions.create(
            model="model.gguf", messages=CHAT, seed=seed, temperature=1.0, max_tokens=40,
            response_format={"type": "json_schema",
                              "json_schema": {"name": "thing", "schema": SCHEMA, "strict": strict}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_response_format_json_object(client):
    r = client.chat.completions.create(model="model.gguf", messages=CHAT, seed=1, max_tokens=30,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_response_format_text_is_unconstrained(client):
    r = client.chat.completions.create(model="model.gguf", messages=CHAT, seed=1, max_tokens=5,
                                       response_format={"type": "text"})
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("response_format,message", [
    ({"type": "xml"}, "response_format type"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3,
                                                                     "maximum": 1}}},
     "nsatisfiable"),
])
def test_bad_response_format_is_a_400(client, response_format, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model="model.gguf", messages=CHAT, max_tokens=5,
                                       response_format=response_format)


def test_pyllm_constraint_fields_as_extra_body(client):
    r = client.completions.create(model="model.gguf", prompt="Pick:", seed=2, max_tokens=10,
                                  extra_body={"choice": ["left", "right"]})
    assert r.choices[0].text in ("left", "right") and r.choices[0].finish_reason == "stop"


WEATHER = {"type": "function",
           "function": {"name": "get_weather", "description": "Weather in a city",
                        "parameters": {"type": "object",
                                       "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                      "days": {"type": "integer", "minimum": 1,
                                                               "maximum": 7}},
                                       "required": ["city", "days"],
                                       "additionalProperties": False}}}
TIME = {"type": "function",
        "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"], "additionalProperties": False}}}


@pytest.mark.parametrize("tool_choice,names", [
    ("required", {"get_weather", "get_time"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
])
def test_tool_choice_constrains_the_reply_to_a_tool_call(client, tool_choice, names):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(3):
        r = client.chat.completions.create(model="model.gguf", messages=CHAT, seed=seed,
                                           max_tokens=40, tools=[WEATHER, TIME],
                                           tool_choice=tool_choice)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_tool_choice_auto_answers_in_text(client):
    r = client.chat.completions.create(model="model.gguf", messages=CHAT, seed=1, max_tokens=5,
                                       tools=[WEATHER], tool_choice="auto")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.mark.parametrize("kwargs,message", [
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "not one of the tools"),
    (dict(tools=[{"type": "function"}], tool_choice="required"), "tools\\[0\\]"),
    (dict(tool_choice="required"), "tool_choice needs tools"),
])
def test_bad_tools_are_a_400(client, kwargs, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model="model.gguf", messages=CHAT, max_tokens=5, **kwargs)


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_with_tool_support_is_given_the_tools(tmp_path, smollm2_path):
    """A chat template that reads `tools` renders the offered tools itself; the server's system
    note is only for templates without tool support (SmolLM2's)."""
    from pyllm.chat import ChatTemplate

    llm = pyllm.load(write_tiny_chat_model(tmp_path / "m.gguf", smollm2_path), progress=False)
    assert not llm.chat_template.supports_tools
    llm.chat_template = ChatTemplate(TOOL_TEMPLATE)
    assert llm.chat_template.supports_tools
    rendered = llm.render_chat(CHAT, tools=[WEATHER])
    assert "get_weather" in rendered and "get_time" not in rendered
    want = llm.encode_prompt(CHAT, tools=[WEATHER])
    with serving(llm) as server:
        r = server.client().chat.completions.create(
            model=llm.name, messages=CHAT, tools=[WEATHER, TIME], seed=0, max_tokens=40,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.usage.prompt_tokens == len(want)  # the template's rendering, not a system note
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
