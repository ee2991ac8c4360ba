"""Bounds on what one chat-template render may cost: time, size, recursion.

A chat template is untrusted code from a model file. Jinja2's sandbox stops it from reaching
Python's internals, but not from working forever or filling memory: two nested `range(100000)`
loops, `{{ n ** (n ** n ** 2) }}` or `{{ 'hello ' * 17000000 }}` are all legal Jinja. Every
render therefore carries a `Budget`:

- a wall-clock deadline, checked on every loop iteration, every call (macros, methods, global
  functions) and every filter;
- a size: no string a template builds, and not the rendered text, may exceed `max_chars`
  characters, and no list, tuple, dict or range `MAX_ITEMS` items (filters such as `unique`,
  `slice` or `map` spend Python time per item, which no deadline check can interrupt);
  `*`, `**`, `%`, `str.replace`/`join`/`expandtabs`, `indent`, `tojson` and `sum` are checked
  before they run (their result could be too large to make at all), everything else after;
  integers may not exceed `MAX_INT_BITS` bits, integer arguments of filters and string methods
  (widths, counts) `MAX_ITEMS`, and `wordwrap` takes at most `MAX_ITEMS` characters;
- a call depth (`MAX_DEPTH`), so a self-recursive macro ends with a clear error long before
  Python's recursion limit.

Breaking a bound raises `TemplateLimitError`; pyllm/chat.py turns it into a ChatTemplateError.
The template's syntax tree is rewritten once at compile time (`guard_tree`) so that loops and
`~` concatenations pass through the checks.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

__all__ = [
    "LOOP_FILTER",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_RANGE",
    "SIZE_FILTER",
    "Budget",
    "TemplateLimitError",
    "guard_filter",
    "guard_tree",
]

MAX_DEPTH = 64  # nested calls (macros calling macros); real templates nest a handful
MAX_INT_BITS = 4096  # integers a template computes (~1,200 decimal digits)
MAX_ITEMS = 100_000  # items in a collection; Jinja's own sandbox limit for range()
MAX_RANGE = MAX_ITEMS
MAX_JSON_INDENT = 16
LOOP_FILTER = "pyllm_loop_guard"
SIZE_FILTER = "pyllm_size_guard"


class TemplateLimitError(Exception):
    """A template broke one of the render's bounds (the message says which)."""


@dataclass
class Budget:
    """One render's allowance."""

    seconds: float
    max_chars: int
    deadline: float = 0.0
    depth: int = 0

    def start(self) -> Budget:
        self.deadline = time.monotonic() + self.seconds
        self.depth = 0
        return self

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {self.seconds:g} s")

    def sized(self, value: Any, what: str = "a value") -> Any:
        """`value`, unless it is larger than the render may hold."""
        if isinstance(value, (str, bytes)):
            if len(value) > self.max_chars:
                raise TemplateLimitError(
                    f"{what} of {len(value):,} characters is longer than "
                    f"the limit of {self.max_chars:,}"
                )
        elif isinstance(value, (list, tuple, dict, set, frozenset, range)):
            if len(value) > MAX_ITEMS:
                raise TemplateLimitError(
                    f"{what} of {len(value):,} items is more than the limit of {MAX_ITEMS:,}"
                )
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value.bit_length() > MAX_INT_BITS
        ):
            raise TemplateLimitError(f"{what} is an integer of more than {MAX_INT_BITS} bits")
        return value

    def allow(self, estimate: int, what: str) -> None:
        """Refuse an operation whose result would hold about `estimate` items/characters."""
        if estimate > self.max_chars:
            raise TemplateLimitError(
                f"{what} would make about {estimate:,} items/characters, "
                f"more than the limit of {self.max_chars:,}"
            )


# The render in progress on this thread (None outside a render, e.g. during constant folding:
# then only the size checks apply, against the default size).
current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "pyllm_template_budget", default=None
)
_DEFAULT = Budget(seconds=float("inf"), max_chars=1 << 22, deadline=float("inf"))


def active() -> Budget:
    return current.get() or _DEFAULT


# ---------------------------------------------------------------------- operators


def _seq_len(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `left <operator> right` before it runs when its result would be too large."""
    b = active()
    b.tick()
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        if abs(left).bit_length() * right > MAX_INT_BITS:
            raise TemplateLimitError(
                f"{left} ** {right} would be an integer of more than {MAX_INT_BITS} bits"
            )
    elif operator == "*":
        for seq, count in ((left, right), (right, left)):
            n = _seq_len(seq)
            if n is not None and _is_int(count):
                if isinstance(seq, (str, bytes)):
                    b.allow(n * max(count, 0), "repeating a string")
                elif n * max(count, 0) > MAX_ITEMS:
                    raise TemplateLimitError(
                        f"repeating a sequence would make {n * count:,} "
                        f"items, more than the limit of {MAX_ITEMS:,}"
                    )
    elif operator == "%" and isinstance(left, str):
        check_format_string(left, "%")


_DIGITS = re.compile(r"\d+")


def check_format_string(fmt: str, style: str) -> None:
    """Refuse a format string whose widths could make huge text: a number in it above the size
    limit, a width taken from the arguments (`%*d`), or a nested field in a spec (`{:{w}}`)."""
    b = active()
    for m in _DIGITS.finditer(fmt):
        if len(m.group()) > 12 or int(m.group()) > b.max_chars:
            raise TemplateLimitError(f"the format string asks for a width of {m.group()}")
    if style == "%" and re.search(r"%[-#0 +]*(\*|\d*\.\*)", fmt):
        raise TemplateLimitError("'%*' widths are not allowed in chat templates")
    if style == "{" and re.search(r"\{[^{}]*:[^{}]*\{", fmt):
        raise TemplateLimitError(
            "nested format fields ('{:{w}}') are not allowed in chat templates"
        )


# ---------------------------------------------------------------------- calls and filters


def _text_len(items: Iterable[Any]) -> int:
    return sum(len(x) if isinstance(x, str) else 32 for x in items)


def check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Estimate the size of `text.<name>(*args)` before it runs."""
    b = active()
    values = [*args, *kwargs.values()]
    for v in values:
        if _is_int(v) and abs(v) > MAX_ITEMS:
            raise TemplateLimitError(
                f"str.{name} got the argument {v}, larger than the limit of {MAX_ITEMS:,}"
            )
    if (
        name == "replace"
        and len(args) >= 2
        and isinstance(args[0], str)
        and isinstance(args[1], str)
    ):
        b.allow(
            _replace_size(text, args[0], args[1], args[2] if len(args) > 2 else -1), "str.replace"
        )
    elif name == "expandtabs":
        size = values[0] if values and _is_int(values[0]) else 8
        b.allow(len(text) + text.count("\t") * max(size, 0), "str.expandtabs")
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        b.allow(_text_len(args[0]) + len(text) * len(args[0]), "str.join")
    elif name in ("format", "format_map"):
        check_format_string(text, "{")


def _replace_size(text: str, old: str, new: str, count: Any) -> int:
    hits = len(text) + 1 if old == "" else text.count(old)
    if _is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * len(new)


# Filters that spend Python time on each item of their input (a string: each character).
_ITERATING_FILTERS = frozenset(
    {
        "batch",
        "slice",
        "map",
        "select",
        "reject",
        "selectattr",
        "rejectattr",
        "unique",
        "groupby",
        "sort",
        "min",
        "max",
        "sum",
    }
)


def _check_filter_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Pre-checks for the filters whose output can dwarf their input. `args[0]` is the value
    (after any context/environment argument a pass_* filter receives)."""
    b = active()
    values = [a for a in args if not hasattr(a, "environment") and not hasattr(a, "filters")]
    value, rest = (values[0], values[1:]) if values else (None, [])
    for v in [*rest, *kwargs.values()]:
        if _is_int(v) and abs(v) > MAX_ITEMS:
            raise TemplateLimitError(
                f"the filter {name!r} got the argument {v}, larger than the limit of {MAX_ITEMS:,}"
            )
    if name in _ITERATING_FILTERS and isinstance(value, str) and len(value) > MAX_ITEMS:
        raise TemplateLimitError(
            f"the filter {name!r} would go through {len(value):,} "
            f"characters one by one; the limit is {MAX_ITEMS:,}"
        )
    if name == "replace" and isinstance(value, str) and len(rest) >= 2:
        old, new = str(rest[0]), str(rest[1])
        b.allow(
            _replace_size(value, old, new, rest[2] if len(rest) > 2 else kwargs.get("count", -1)),
            "the replace filter",
        )
    elif name == "join" and isinstance(value, (list, tuple)):
        sep = rest[0] if rest else kwargs.get("d", "")
        b.allow(_text_len(value) + len(str(sep)) * len(value), "the join filter")
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        w = len(width) if isinstance(width, str) else width if _is_int(width) else 4
        b.allow(len(value) + (value.count("\n") + 1) * max(w, 0), "the indent filter")
    elif name == "tojson":
        indent = rest[0] if rest else kwargs.get("indent")
        if isinstance(indent, int) and indent > MAX_JSON_INDENT:
            raise TemplateLimitError(
                f"tojson's indent may be at most {MAX_JSON_INDENT}, got {indent}"
            )
    elif name == "format" and isinstance(value, str):
        check_format_string(value, "%")
    elif name == "wordwrap" and isinstance(value, str) and len(value) > MAX_ITEMS:
        raise TemplateLimitError(
            f"wordwrap of {len(value):,} characters; the limit is {MAX_ITEMS:,}"
        )
    elif name == "sum":
        start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)  # (iterable, attribute, start)
        if not isinstance(start, (int, float)):
            raise TemplateLimitError(
                "the sum filter adds numbers only (a sum of lists takes "
                "time quadratic in their length)"
            )


def guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with the budget's checks around it (keeps Jinja's pass_context & co. markers)."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = active()
        b.tick()
        _check_filter_args(name, args, kwargs)
        result = fn(*args, **kwargs)
        return b.sized(result, f"the result of the filter {name!r}")

    return guarded


def loop_guard(iterable: Any) -> Iterator[Any]:
    """What a `{% for %}` loop iterates: the same items, checking the deadline on each."""
    b = active()
    for item in iterable:
        b.tick()
        yield item


def size_guard(value: Any) -> Any:
    return active().sized(value, "a concatenation")


def bounded_range(*args: Any) -> range:
    """`range` with at most MAX_RANGE items (and the size limit)."""
    r = range(*args)
    limit = MAX_RANGE
    if len(r) > limit:
        raise TemplateLimitError(f"range() of {len(r):,} items; the limit is {limit:,}")
    return r


class BoundedNamespace(Namespace):
    """`namespace()` whose attributes are size-checked when set (`{% set ns.s = ns.s ~ ns.s %}`
    in a loop would otherwise double a string at every step)."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, active().sized(value, f"namespace attribute {name!r}"))


# ---------------------------------------------------------------------- the tree rewrite


class _Guard(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # rewrites the children in place
        node.iter = nodes.Filter(node.iter, LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, SIZE_FILTER, [], [], None, None, lineno=node.lineno)


def guard_tree(tree: nodes.Template) -> nodes.Template:
    """Route every loop's items and every `~` result through the budget (in place)."""
    _Guard().visit(tree)
    return tree
