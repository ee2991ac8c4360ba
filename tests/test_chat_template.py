"""Chat templates: sandboxed rendering, refusal of escape attempts, and the default model's template."""

from __future__ import annotations

import json
import time

import pytest

from pyllm.chat import (
    CHATML_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    validate_messages,
)

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


# ---------------------------------------------------------------------- bounded rendering

# Each must end in a ChatTemplateError, quickly: before, they hung, took minutes and gigabytes,
# or raised TypeError / MemoryError / RecursionError / OverflowError.
HOSTILE = {
    "nested range loops": "{% for a in range(100000) %}{% for b in range(100000) %}"
                          "{% endfor %}{% endfor %}",
    "tower of powers": "{% set n = 10 %}{{ n ** (n ** n ** 2) }}",
    "lipsum": "{{ lipsum(100000, false, 100000, 100001) }}",
    "string product": "{{ 'hello ' * 17000000 }}",
    "string product, reversed": "{{ 17000000 * 'hello ' }}",
    "list product": "{{ [1, 2, 3] * 100000000 }}",
    "product of products": "{{ ([1] * 100000) * 100000 }}",
    "include": "{% include 'other.jinja' %}",
    "import": "{% import 'macros.jinja' as m %}",
    "from import": "{% from 'macros.jinja' import m %}",
    "extends": "{% extends 'base.jinja' %}",
    "self-recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "branching recursion": "{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive loop": "{% for x in messages recursive %}{{ loop([x]) }}{% endfor %}",
    "doubling namespace": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                          "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "doubling with +": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                       "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "huge integer": "{% set ns = namespace(n=3) %}{% for i in range(40) %}"
                    "{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "center filter": "{{ 'a' | center(1000000000) }}",
    "center method": "{{ 'a'.center(1000000000) }}",
    "replace filter": "{{ ('x' * 100000) | replace('x', 'y' * 100) }}",
    "replace method": "{{ ('x' * 1000000).replace('', 'yyyyyyyyyy') }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "percent star": "{{ '%*d' % (999999999, 1) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format nested width": "{{ '{:{w}}'.format(1, w=999999999) }}",
    "expandtabs": "{{ ('\t' * 100000).expandtabs(1000) }}",
    "join": "{{ ([('x' * 100000)] * 100000) | join }}",
    "tojson indent": "{{ [[[[1]]]] | tojson(indent=1000000) }}",
    "output size": "{% set s = 'x' * 3000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
    "loop over a long string": "{% set s = 'x' * 4000 %}{% for c in s %}{% for d in s %}"
                               "{% for e in s %}{% endfor %}{% endfor %}{% endfor %}",
    "float overflow": "{{ 2.0 ** 100000 }}",
    # Python-level work per item that no deadline check can interrupt (98 s, 10 s, 8 s before
    # the item and argument limits).
    "sum of lists": "{{ ([[1] * 2000] * 2000) | sum(start=[]) }}",
    "wordwrap of a long text": "{{ ('a ' * 2000000) | wordwrap(1) }}",
    "slice into many": "{{ ([1] * 4000000) | slice(4000000) | list }}",
    "long list through filters": "{{ (range(100000) | list) * 40 }}",
    "string through map": "{{ ('x' * 4000000) | map('upper') | list }}",
    "string batched": "{{ ('x' * 4000000) | batch(1) | list }}",
    "percent with many arguments": "{{ ('%s' * 1000000) % ((1,) * 1000000) }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_unbounded_work_is_refused_quickly(name):
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError):
        ChatTemplate(HOSTILE[name], max_seconds=0.5).render(MSGS)
    assert time.perf_counter() - start < 2.0


def test_the_default_deadline_applies():
    from pyllm.chat import MAX_RENDER_SECONDS

    t = ChatTemplate(HOSTILE["nested range loops"])
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=f"longer than {MAX_RENDER_SECONDS:g} s"):
        t.render(MSGS)
    assert time.perf_counter() - start < MAX_RENDER_SECONDS + 1.0


@pytest.mark.parametrize("source", [
    "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "{% for a in messages %}" * 30 + "{% endfor %}" * 30,  # Python's 20 nested blocks
    "{% if true %}" * 3000 + "{% endif %}" * 3000,
    "{{ " + "-" * 20000 + "1 }}",
])
def test_templates_nested_too_deeply_do_not_compile(source):
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate(source)


def test_limit_messages_say_what_was_too_big():
    with pytest.raises(ChatTemplateError, match="102,000,000"):
        ChatTemplate(HOSTILE["string product"]).render(MSGS)
    with pytest.raises(ChatTemplateError, match="include"):
        ChatTemplate(HOSTILE["include"])
    with pytest.raises(ChatTemplateError, match="nest deeper than"):
        ChatTemplate(HOSTILE["self-recursive macro"]).render(MSGS)


def test_the_output_limit_grows_with_the_conversation():
    """Big messages are fine: the limit is a fixed allowance plus twice the messages' text."""
    big = [{"role": "user", "content": "y" * 5_000_000}]
    out = ChatTemplate(None).render(big)
    assert len(out) > 5_000_000
    with pytest.raises(ChatTemplateError, match="longer than"):
        ChatTemplate("{% for i in range(5) %}{{ messages[0].content }}{% endfor %}",
                     max_chars=1000).render([{"role": "user", "content": "y" * 600}])


def test_bounded_features_still_work():
    src = ("{% set ns = namespace(s='') %}{% for i in range(3) %}{% set ns.s = ns.s ~ i %}"
           "{% endfor %}{{ ns.s }}|{{ 'ab' * 2 }}|{{ 2 ** 10 }}|{{ '%05d' % 42 }}|"
           "{{ '{:>4}'.format('x') }}|{{ 'a-b' | replace('-', '+') }}|{{ ['a', 'b'] | join(',') }}"
           "|{{ 'x' | center(5) }}|{{ {'k': [1]} | tojson(indent=2) }}")
    assert ChatTemplate(src).render(MSGS) == ("012|abab|1024|00042|   x|a+b|a,b|  x  |"
                                              + json.dumps({"k": [1]}, indent=2))


def test_a_refused_template_from_a_model_file_fails_only_when_rendering():
    for source in (HOSTILE["include"], "{{ ''.__class__.__mro__ }}", "{% for %}"):
        t = ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": source})
        assert t.error is not None and not t.is_fallback
        with pytest.raises(ChatTemplateError, match=r"refused|does not compile"):
            t.render(MSGS)
    t = ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": 42})
    with pytest.raises(ChatTemplateError, match="must be a string"):
        t.render(MSGS)
