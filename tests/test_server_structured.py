"""Structured output through `pyllm serve`: OpenAI's response_format and pyllm's own constraint
fields, through the official openai client, on a tiny random model (only the constraint keeps
its output in shape)."""

from __future__ import annotations

import json

import jsonschema
import pytest

openai = pytest.importorskip("openai")

import pyllm  # noqa: E402
from test_server import serving  # noqa: E402
from tiny_chat import write_tiny_chat_model  # noqa: E402

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
