"""Chat templates: sandboxed rendering, refusal of escape attempts, and the default model's template."""

from __future__ import annotations

import json

import pytest

from pyllm.chat import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError, validate_messages

MSGS = [{"role": "user", "content": "Hi there"}]

SANDBOX_ESCAPES = [
    # The classic: walk from a string to object's subclasses and on to os / subprocess.
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c.__name__ }}{% endfor %}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    # Subscript spelling and the attr filter.
    "{{ ''['__class__']['__mro__'] }}",
    "{{ (''|attr('__class__')) }}",
    # A name built at run time so no literal appears in the source.
    "{% set n = '__cla' ~ 'ss__' %}{{ ''|attr(n) }}",
    "{% set n = '__cla' ~ 'ss__' %}{% if ''[n] %}leak{% endif %}",
    # Reaching for function globals / frames.
    "{{ raise_exception.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% set g = (x for x in []) %}{{ g.gi_frame }}",
    "{{ ''.__class__.mro() }}",
    # Mutating the caller's data is refused by the immutable sandbox.
    "{{ messages.append({'role': 'system', 'content': 'pwned'}) }}",
    "{% set d = messages[0] %}{{ d.update({'content': 'x'}) }}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_sandbox_escape_is_refused(source):
    messages = [dict(m) for m in MSGS]
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(messages)
    assert messages == MSGS  # nothing was modified


def test_escape_is_refused_before_anything_runs():
    """A template naming __subclasses__ fails at compile time: even text before it never renders."""
    with pytest.raises(ChatTemplateError, match="not executed"):
        ChatTemplate("{{ raise_exception('ran') }}{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_chatml_fallback():
    t = ChatTemplate(None)
    assert t.is_fallback and t.source == CHATML_TEMPLATE
    out = t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n" \
                  "<|im_start|>assistant\n"
    assert not t.render(MSGS, add_generation_prompt=False).endswith("assistant\n")


def test_raise_exception_and_compile_errors_are_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="only user"):
        ChatTemplate("{{ raise_exception('only user messages') }}").render(MSGS)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")


def test_common_template_features_work():
    """Features real templates use: namespace(), loop controls, tojson, bos_token, strip."""
    src = ("{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}"
           "{% if m.role == 'system' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}"
           "[{{ m.role }}:{{ m.content | trim }}]{% endfor %}{{ ns.n }}{{ {'a': 'é'} | tojson }}")
    t = ChatTemplate(src, bos_token="<s>")
    out = t.render([{"role": "system", "content": "x"}, {"role": "user", "content": " a "},
                    {"role": "assistant", "content": "b"}])
    assert out == '<s>[user:a][assistant:b]2{"a": "é"}'


@pytest.mark.parametrize("bad", ["hello", [{"role": "user"}], [{"role": 3, "content": "x"}],
                                 [{"role": "user", "content": None}], ["text"]])
def test_bad_messages_are_value_errors(bad):
    with pytest.raises(ValueError):
        validate_messages(bad)


def test_hf_folder_templates(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"},
                           {"name": "default", "template": "{{ messages[0].content }}!"}]}))
    assert ChatTemplate.from_hf_folder(tmp_path).render(MSGS) == "Hi there!"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages | length }}")
    assert ChatTemplate.from_hf_folder(tmp_path).render(MSGS) == "J1"


def test_malicious_template_in_model_metadata_is_refused():
    md = {"tokenizer.chat_template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
    with pytest.raises(ChatTemplateError):
        ChatTemplate.from_gguf_metadata(md).render(MSGS)


# ---------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path):
    from pyllm.weights.gguf import load_gguf

    return load_gguf(smollm2_path).metadata


def test_smollm2_template_renders_chatml_with_default_system_prompt(smollm2_metadata):
    t = ChatTemplate.from_gguf_metadata(smollm2_metadata)
    assert not t.is_fallback
    out = t.render([{"role": "user", "content": "What is 2+2?"}])
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n")
    # An explicit system prompt replaces the default one, and is then plain ChatML.
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert t.render(msgs) == ChatTemplate(None).render(msgs)
