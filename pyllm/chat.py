"""Chat templates: a conversation (list of messages) -> the prompt text the model was trained on.

Templates come from the model (GGUF `tokenizer.chat_template`, or a Hugging Face folder's
`chat_template.jinja` / `tokenizer_config.json`) and are untrusted code, so they render in Jinja2's
`ImmutableSandboxedEnvironment`, hardened twice:

- before anything runs, the template's syntax tree is scanned and a template that names a private
  attribute (`__class__`, `__mro__`, `__subclasses__`, `_anything`, `mro`, `gi_frame`, ...) is
  refused with `ChatTemplateError` — it is never executed;
- at render time any unsafe attribute reached dynamically (e.g. `x[name]` with a computed name)
  raises at once instead of becoming a silently-false Undefined.

Rendering is bounded too (pyllm/chat_limits.py): a deadline (`max_seconds`), a size for every
value and for the output (`max_chars`), a call depth; `include`/`import`/`extends` are refused
(templates are one self-contained string). A template from a model file that is refused at
compile time does not stop the model from loading: only rendering a conversation fails.

A model without a template gets ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.types import Message

from pyllm import chat_limits as limits
from pyllm.errors import PyllmError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Names a template may never touch, whatever the object (besides every name starting with "_").
_FORBIDDEN_NAMES = frozenset(
    {
        "mro",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "cr_code",
        "ag_code",
        "ag_frame",
        "f_globals",
        "f_locals",
        "f_builtins",
        "func_globals",
        "func_code",
        "tb_frame",
    }
)


MAX_TEMPLATE_SOURCE = 1 << 20  # characters of template source (real ones are < 50 KB)
MAX_RENDER_SECONDS = 2.0  # real templates render in milliseconds
MAX_RENDER_CHARS = 1 << 22  # besides twice the conversation's own characters

# Tags that load other templates: a chat template is one string, with nothing to load.
_LOADING_TAGS = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "import",
    nodes.Extends: "extends",
}


class ChatTemplateError(PyllmError, ValueError):
    """A chat template is unsafe, malformed, or failed while rendering."""


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"chat template tried to reach {attribute!r} of a {type(obj).__name__}: refused"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits.check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        return limits.active().sized(result, f"the result of {operator!r}")

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = limits.active()
        budget.tick()
        target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            limits.check_str_method(owner, getattr(target, "__name__", ""), args, kwargs)
        budget.depth += 1
        try:
            if budget.depth > limits.MAX_DEPTH:
                raise limits.TemplateLimitError(
                    f"calls nest deeper than {limits.MAX_DEPTH} (a macro that calls itself?)"
                )
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return budget.sized(result, "a call's result")


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template raised: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _check_tree(tree: nodes.Template) -> None:
    """Refuse a template whose source names a private or frame-reaching attribute, or that
    loads other templates."""
    for tag in tree.find_all(tuple(_LOADING_TAGS)):
        raise ChatTemplateError(
            f"chat template refused: it uses {{% {_LOADING_TAGS[type(tag)]} %}} (line "
            f"{tag.lineno}); a chat template must be self-contained"
        )
    node: Any
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            if not isinstance(node.arg, nodes.Const) or not isinstance(node.arg.value, str):
                continue  # dynamic keys are checked at render time by the sandbox
            name = node.arg.value
        else:
            name = node.name
        if name.startswith("_") or name in _FORBIDDEN_NAMES:
            raise ChatTemplateError(
                f"chat template refused: it reaches for {name!r} (line {node.lineno}), which "
                "could escape the sandbox; the template was not executed"
            )
    # Strings handed to attribute-fetching filters (`x|attr('__class__')`) count too.
    for const in tree.find_all(nodes.Const):
        value = const.value
        if isinstance(value, str) and value.startswith("__") and value.endswith("__"):
            raise ChatTemplateError(
                f"chat template refused: it names {value!r} (line {const.lineno}), which "
                "could escape the sandbox; the template was not executed"
            )


class ChatTemplate:
    """A compiled, sandboxed chat template.

    `render(messages, add_generation_prompt=True)` returns the prompt text; the model's special
    tokens appear in it as text (tokenize it with `parse_special=True`).
    """

    def __init__(
        self,
        source: str | None = None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        default: bool = False,
        max_seconds: float = MAX_RENDER_SECONDS,
        max_chars: int = MAX_RENDER_CHARS,
    ) -> None:
        self.source = source if source else CHATML_TEMPLATE
        self.is_fallback = not source or default
        self.bos_token, self.eos_token = bos_token, eos_token
        self.max_seconds, self.max_chars = max_seconds, max_chars
        self.error: ChatTemplateError | None = None  # set when a lenient load kept a refusal
        self.supports_tools = False  # the template reads a `tools` variable (set below)
        if len(self.source) > MAX_TEMPLATE_SOURCE:
            raise ChatTemplateError(
                f"chat template refused: {len(self.source):,} characters, "
                f"more than the limit of {MAX_TEMPLATE_SOURCE:,}"
            )
        env = _Env(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.filters = {name: limits.guard_filter(name, fn) for name, fn in env.filters.items()}
        env.filters[limits.LOOP_FILTER] = limits.loop_guard
        env.filters[limits.SIZE_FILTER] = limits.size_guard
        env.globals.pop("lipsum", None)  # placeholder text: no template needs it
        env.globals["range"] = limits.bounded_range
        env.globals["namespace"] = limits.BoundedNamespace
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            tree = env.parse(self.source)
            _check_tree(tree)
            # Templates written for tool calling (Qwen, Llama 3.1, Hermes, ...) read a `tools`
            # variable: the server then hands them the request's tools instead of describing
            # the tools in a system message of its own.
            self.supports_tools = "tools" in meta.find_undeclared_variables(tree)
            self._template = env.from_string(limits.guard_tree(tree))
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc}") from exc
        except (RecursionError, MemoryError, SyntaxError, limits.TemplateLimitError) as exc:
            # nested too deeply for Jinja's parser or for Python's compiler (20 nested loops)
            raise ChatTemplateError(
                f"chat template does not compile: {type(exc).__name__}: {_short(exc)}"
            ) from None

    @classmethod
    def lenient(cls, source: str | None, **options: Any) -> ChatTemplate:
        """`cls(source, ...)`, or a template that keeps the refusal and raises it on every
        render: a model whose template is refused still loads and runs without chat."""
        try:
            return cls(source, **options)
        except ChatTemplateError as exc:
            t = cls(
                None, bos_token=options.get("bos_token", ""), eos_token=options.get("eos_token", "")
            )
            t.source, t.is_fallback, t.error = source or "", False, exc
            return t

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        msgs = validate_messages(messages)
        if self.error is not None:
            raise ChatTemplateError(str(self.error))
        size = sum(len(m["content"]) for m in msgs)
        budget = limits.Budget(self.max_seconds, self.max_chars + 2 * size).start()
        token = limits.current.set(budget)
        try:
            return self._render(budget, msgs, add_generation_prompt, extra)
        except (ChatTemplateError, ValueError) as exc:
            if isinstance(exc, ChatTemplateError):
                raise
            raise ChatTemplateError(
                f"chat template failed: {type(exc).__name__}: {_short(exc)}"
            ) from None
        except limits.TemplateLimitError as exc:
            raise ChatTemplateError(f"chat template refused: {exc}") from None
        except SecurityError as exc:
            raise ChatTemplateError(f"chat template refused: {exc}") from exc
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever untrusted template code raised
            raise ChatTemplateError(
                f"chat template failed: {type(exc).__name__}: {_short(exc)}"
            ) from None
        finally:
            limits.current.reset(token)

    def _render(
        self,
        budget: limits.Budget,
        msgs: list[dict[str, Any]],
        add_generation_prompt: bool,
        extra: dict[str, Any],
    ) -> str:
        """Render piece by piece, counting the output against the budget."""
        parts: list[str] = []
        total = 0
        for piece in self._template.generate(
            messages=msgs,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        ):
            total += len(piece)
            if total > budget.max_chars:
                raise limits.TemplateLimitError(
                    f"the rendered prompt is longer than {budget.max_chars:,} characters"
                )
            budget.tick()
            parts.append(piece)
        return "".join(parts)

    # ---------------------------------------------------------------- where templates come from

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], *, bos_token: str = "", eos_token: str = ""
    ) -> ChatTemplate:
        source = metadata.get("tokenizer.chat_template")
        if source is not None and not isinstance(source, str):
            t = cls.lenient(None, bos_token=bos_token, eos_token=eos_token)
            t.is_fallback = False
            t.error = ChatTemplateError("tokenizer.chat_template must be a string")
            return t
        return cls.lenient(source or None, bos_token=bos_token, eos_token=eos_token)

    @classmethod
    def from_hf_folder(
        cls, folder: Path, *, bos_token: str = "", eos_token: str = ""
    ) -> ChatTemplate:
        folder = Path(folder)
        source: str | None = None
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        else:
            source = _template_from_config(folder)
        return cls.lenient(source, bos_token=bos_token, eos_token=eos_token)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _template_from_config(folder: Path) -> str | None:
    for name in ("tokenizer_config.json", "chat_template.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ChatTemplateError(f"{path}: not valid JSON ({exc})") from exc
        tpl = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default") or next(iter(named.values()), None)
        if tpl is not None and not isinstance(tpl, str):
            raise ChatTemplateError(f"{path}: chat_template must be a string")
        if tpl:
            return tpl
    return None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Copy `messages` into plain dicts, checking each has a string role and content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]['role'] must be a non-empty string")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a string")
        out.append(dict(m))
    return out


def is_messages(prompt: Any) -> TypeGuard[Sequence[Message]]:
    """True when `prompt` looks like a conversation (a list of dicts) rather than text/ids."""
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, (str, bytes))
        and len(prompt) > 0
        and all(isinstance(m, Mapping) for m in prompt)
    )
