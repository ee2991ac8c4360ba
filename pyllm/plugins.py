"""The plugin manager: finds plugins through the ``pyllm`` entry-point group and collects what they
register.

Nothing is imported until a registry is first asked for (``tokenizers()``, ``commands()``...):
then every selected entry point is loaded, and each hook is called once through pluggy
(``pm.hook.register_tasks(register=...)``), so pluggy's rules hold: ``tryfirst``/``trylast`` set
the order in which plugins are asked, and ``wrapper=True`` (or old-style ``hookwrapper=True``)
implementations run around all the others. Each ``register(...)`` call is checked against the
protocols in :mod:`pyllm.types` (:mod:`pyllm.plugin_checks`); a registration that fails the check
is refused, named with its plugin in a warning and in ``pyllm plugins``.

Failures are isolated: a plugin that fails to import, or whose hook raises, is reported once (a
``warning`` on the ``pyllm.plugins`` logger, which the CLI prints on stderr) and skipped, and the
hook is called again without it, so that what the failing call had registered is discarded and
every other plugin keeps working. Hooks should therefore only register (no other side effects).

When two plugins register the same name, pyllm's built-in plugins (``pyllm_tokenizers``,
``pyllm_samplers``, ``pyllm_tasks``, ``pyllm_sources``, entry points of the ``pyllm`` distribution
itself) win; among the others, the registration made first in pluggy's call order wins. The
built-ins are asked first, then third-party plugins in distribution-name order (plugins added at
run time with :func:`registered` before those), unless ``tryfirst``/``trylast`` say otherwise.
Registries list the built-ins' entries first.

``PYLLM_PLUGINS`` restricts which plugins load: a comma-separated list of entry-point names or
distribution names; ``builtin`` stands for every built-in plugin. Unset means all; an empty value
means none (pyllm then has no tokenizers). For example ``PYLLM_PLUGINS=builtin`` ignores every
third-party plugin, ``PYLLM_PLUGINS=builtin,pyllm-example`` adds one.

Tests add a plugin object for the duration of a ``with`` block::

    with pyllm.plugins.registered(MyPlugin()):
        assert "my_step" in pyllm.plugins.samplers()
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import pluggy

from pyllm import hookspecs
from pyllm.hookspecs import hookimpl
from pyllm.plugin_checks import Refused, ReplCommand, check_registration

if TYPE_CHECKING:  # pragma: no cover
    from importlib.metadata import EntryPoint

    import click

    from pyllm.types import ModelSource, TaskAdapter

__all__ = [
    "PUBLIC_MODULES",
    "PluginHost",
    "ReplCommand",
    "commands",
    "constraints",
    "get_host",
    "get_plugin_manager",
    "hookimpl",
    "model_sources",
    "plugin_report",
    "registered",
    "repl_commands",
    "reset",
    "samplers",
    "tasks",
    "tokenizers",
]

# The modules of pyllm a plugin may import (docs/plugins.md, "What a plugin may import"):
# pyllm's side of the plugin boundary. tests/test_import_rules.py checks every plugin in plugins/.
PUBLIC_MODULES: tuple[str, ...] = (
    "pyllm",  # load, LLM, SamplingParams, Message, the errors
    "pyllm.types",  # the protocols a plugin implements
    "pyllm.hookspecs",  # hookimpl and the hooks
    "pyllm.plugins",  # hookimpl, registered() and the registries (for tests)
    "pyllm.errors",
    "pyllm.sampling_params",
    "pyllm.tasks",  # other tasks by name, JSONL task jobs
    "pyllm.cli_options",  # the options and task I/O of pyllm's commands
)

ENTRY_POINT_GROUP = "pyllm"
ENV_VAR = "PYLLM_PLUGINS"
BUILTIN_DISTRIBUTION = "pyllm"
BUILTIN_ALIAS = "builtin"

log = logging.getLogger("pyllm.plugins")

# registry kind -> the hook that fills it
KINDS: dict[str, str] = {
    "tokenizers": "register_tokenizers",
    "samplers": "register_samplers",
    "constraints": "register_constraints",
    "tasks": "register_tasks",
    "model_sources": "register_model_sources",
    "commands": "register_commands",
    "repl_commands": "register_repl_commands",
}


@dataclass
class PluginInfo:
    """What pyllm knows about one plugin (a row of ``pyllm plugins``)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    builtin: bool = False
    registered: dict[str, list[str]] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)  # {kind, name, reason}
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "registered": {k: list(v) for k, v in self.registered.items() if v},
            "refused": [dict(r) for r in self.refused],
            "error": "; ".join(self.errors) or None,
        }


def _normalize(name: str) -> str:
    """Distribution names compare like pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _selection_from_env() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginHost:
    """One pluggy PluginManager plus the registries built from it.

    :param selection: the names to load (see the module docstring); None loads every entry point.
        :func:`get_host` passes the ``PYLLM_PLUGINS`` environment variable.
    :param load_entry_points: False starts with no plugins at all (for tests).
    """

    def __init__(
        self, selection: Collection[str] | None = None, *, load_entry_points: bool = True
    ) -> None:
        self._selection = None if selection is None else set(selection)
        self._load_entry_points = load_entry_points
        self._pm: pluggy.PluginManager | None = None
        self._infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, Any]] = {}
        self._reported: set[tuple[str, str]] = set()

    # -- loading ------------------------------------------------------------------------------

    @property
    def pm(self) -> pluggy.PluginManager:
        if self._pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            self._pm = pm
            if self._load_entry_points:
                self._load_all(pm)
        return self._pm

    def _load_all(self, pm: pluggy.PluginManager) -> None:
        from importlib.metadata import entry_points

        eps = list(entry_points(group=ENTRY_POINT_GROUP))
        builtin = [ep for ep in eps if self._is_builtin(ep)]
        others = sorted(
            (ep for ep in eps if not self._is_builtin(ep)),
            key=lambda ep: (_normalize(self._dist_name(ep) or ""), ep.name),
        )
        matched: set[str] = set()
        chosen: list[tuple[PluginInfo, EntryPoint]] = []
        for ep in builtin + others:
            keys = self._selection_keys(ep)
            if self._selection is not None:
                hit = keys & self._selection
                if not hit:
                    continue
                matched |= hit
            chosen.append((self._new_info(ep), ep))
        # pluggy asks the last registered plugin first: register in reverse so that the
        # built-ins are asked first and the others in distribution-name order.
        for info, ep in reversed(chosen):
            self._load_one(pm, info, ep)
        if self._selection is not None:
            for name in sorted(self._selection - matched):
                self._warn(
                    ("selection", name), f"{ENV_VAR} names {name!r} but no such plugin is installed"
                )
        self._check_pending(pm)

    def _check_pending(self, pm: pluggy.PluginManager) -> None:
        """Warn about implementations of hooks pyllm does not have (a misspelt hook name)."""
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin) or repr(e.plugin)
            self._warn(("pending", name), f"plugin {name!r}: {' '.join(str(e).split())}")

    @staticmethod
    def _dist_name(ep: EntryPoint) -> str | None:
        dist = getattr(ep, "dist", None)
        return dist.metadata["Name"] if dist is not None else None

    def _is_builtin(self, ep: EntryPoint) -> bool:
        return _normalize(self._dist_name(ep) or "") == BUILTIN_DISTRIBUTION

    def _selection_keys(self, ep: EntryPoint) -> set[str]:
        keys = {ep.name}
        dist = self._dist_name(ep)
        if dist:
            keys |= {dist, _normalize(dist)}
        if self._is_builtin(ep):
            keys.add(BUILTIN_ALIAS)
        return keys

    def _new_info(self, ep: EntryPoint) -> PluginInfo:
        name = ep.name
        dist = self._dist_name(ep)
        if name in self._infos:  # two distributions use the same entry-point name
            name = f"{dist}:{ep.name}"
        info = PluginInfo(
            name=name,
            distribution=dist,
            version=dist_info.version if (dist_info := getattr(ep, "dist", None)) else None,
            module=ep.value,
            builtin=self._is_builtin(ep),
        )
        self._infos[name] = info
        return info

    def _load_one(self, pm: pluggy.PluginManager, info: PluginInfo, ep: EntryPoint) -> None:
        name = info.name
        try:
            plugin = ep.load()
            pm.register(plugin, name=name)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop pyllm
            info.errors.append(f"failed to load: {_error_text(e)}")
            self._warn(
                (name, "load"), f"plugin {name!r} failed to load and is skipped: {_error_text(e)}"
            )

    def _warn(self, key: tuple[str, str], message: str) -> None:
        """Log a warning once per key for the life of this host."""
        if key not in self._reported:
            self._reported.add(key)
            log.warning(message)

    # -- registries ---------------------------------------------------------------------------

    def registry(self, kind: str) -> dict[str, Any]:
        """name -> registered object for one kind (see :data:`KINDS`), built on first use."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin registry {kind!r}; known: {', '.join(KINDS)}")
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        return self._registries[kind]

    def _collect(self, kind: str) -> dict[str, Any]:
        """Call the kind's hook through pluggy; on a failure, report the failing plugin, call
        again without it (its registrations are discarded with that call)."""
        hook_name = KINDS[kind]
        skipped: list[object] = []  # plugins whose hook raised
        while True:
            caller = (
                self.pm.subset_hook_caller(hook_name, skipped)
                if skipped
                else getattr(self.pm.hook, hook_name)
            )
            recorder = _Recorder(kind, _impl_owners(caller))
            try:
                caller(register=recorder.register)
            except Exception as e:  # noqa: BLE001 - isolate the plugin, keep the others
                culprits = recorder.culprits(e) or self._failing_alone(hook_name, skipped)
                if not culprits:
                    self._warn(
                        ("hook", hook_name),
                        f"{hook_name} failed and no plugin could be blamed: {_error_text(e)}",
                    )
                    return {}
                for plugin_name, error in culprits.items():
                    self._hook_failed(plugin_name, hook_name, error)
                    skipped.append(self.pm.get_plugin(plugin_name))
                continue
            finally:
                recorder.closed = True
            return self._accept(kind, recorder)

    def _hook_failed(self, plugin: str, hook_name: str, exc: BaseException) -> None:
        self._info(plugin).errors.append(f"{hook_name}: {_error_text(exc)}")
        self._warn(
            (plugin, hook_name),
            f"plugin {plugin!r} raised in {hook_name} and is skipped for it: {_error_text(exc)}",
        )

    def _failing_alone(self, hook_name: str, skipped: list[object]) -> dict[str, BaseException]:
        """The plugins whose hook raises when called on its own (when the traceback of a failed
        call names none, e.g. a wrapper that did not yield)."""
        failing: dict[str, BaseException] = {}
        everyone = [p for _, p in self.pm.list_name_plugin()]
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if impl.plugin in skipped:
                continue
            alone = self.pm.subset_hook_caller(
                hook_name, [p for p in everyone if p is not impl.plugin]
            )
            recorder = _Recorder(KIND_OF_HOOK[hook_name], _impl_owners(alone))
            try:
                alone(register=recorder.register)
            except Exception as e:  # noqa: BLE001 - looking for the failing plugin
                failing[impl.plugin_name] = e
        return failing

    def _accept(self, kind: str, recorder: _Recorder) -> dict[str, Any]:
        """The registry from one successful hook call: the built-ins' registrations first, then
        the others in call order; a name already taken and a refused registration are reported."""
        label = kind[:-1].replace("_", " ")
        for plugin, name, reason in recorder.refused:
            self._refuse(
                plugin, kind, name, reason, f"plugin {plugin!r}: {label} {name!r} refused: {reason}"
            )
        result: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin in {p for p, _, _ in recorder.items}:
            self._info(plugin).registered.setdefault(kind, []).clear()
        ordered = sorted(
            enumerate(recorder.items),
            key=lambda item: (not self._info(item[1][0]).builtin, item[0]),
        )
        for _, (plugin, name, obj) in ordered:
            if name in result:
                self._refuse(
                    plugin,
                    kind,
                    name,
                    f"already registered by {owner[name]!r}",
                    f"plugin {plugin!r} registers {label} {name!r}, already "
                    f"registered by {owner[name]!r}; ignored",
                )
                continue
            result[name] = obj
            owner[name] = plugin
            self._info(plugin).registered.setdefault(kind, []).append(name)
        return result

    def _refuse(self, plugin: str, kind: str, name: str, reason: str, message: str) -> None:
        self._info(plugin).refused.append({"kind": kind, "name": name, "reason": reason})
        self._warn((plugin, f"{kind}:{name}"), message)

    def _info(self, plugin: str) -> PluginInfo:
        if plugin not in self._infos:  # registered directly (tests), not from an entry point
            obj = self.pm.get_plugin(plugin)
            module = getattr(obj, "__name__", None) or type(obj).__module__
            self._infos[plugin] = PluginInfo(name=plugin, module=module)
        return self._infos[plugin]

    def invalidate(self) -> None:
        """Forget the built registries (after plugins were added or removed)."""
        self._registries.clear()
        for info in self._infos.values():
            info.registered.clear()
            info.refused.clear()
            info.errors = [e for e in info.errors if e.startswith("failed to load")]

    def report(self) -> list[dict[str, Any]]:
        """One dict per plugin: name, distribution, version, module, builtin, registered, error."""
        for kind in KINDS:
            self.registry(kind)
        for name, _plugin in self.pm.list_name_plugin():
            self._info(name)
        return [info.as_dict() for info in self._infos.values()]

    # -- adding plugins at run time -----------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods)."""
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise ValueError(f"plugin {name or plugin!r} is blocked or already registered")
        self._check_pending(self.pm)
        self.invalidate()
        return registered

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._infos.pop(name, None)
        self.invalidate()

    @contextmanager
    def registered(self, plugin: object, name: str | None = None) -> Iterator[str]:
        """Register ``plugin`` for the duration of a ``with`` block; always unregistered after."""
        plugin_name = self.register(plugin, name=name)
        try:
            yield plugin_name
        finally:
            self.unregister(plugin_name)


KIND_OF_HOOK = {hook: kind for kind, hook in KINDS.items()}


def _code_of(function: Any) -> list[CodeType]:
    """The code objects whose frames are on the stack while ``function`` runs."""
    base = getattr(function, "__func__", function)
    codes = []
    for f in (base, inspect.unwrap(base)):
        code = getattr(f, "__code__", None)
        if code is not None and code not in codes:
            codes.append(code)
    return codes


def _impl_owners(caller: pluggy.HookCaller) -> dict[CodeType, list[tuple[object, str]]]:
    """code object of each hook implementation -> [(bound instance or None, plugin name)]."""
    owners: dict[CodeType, list[tuple[object, str]]] = {}
    for impl in caller.get_hookimpls():
        instance = getattr(impl.function, "__self__", None)
        for code in _code_of(impl.function):
            owners.setdefault(code, []).append((instance, impl.plugin_name))
    return owners


class _Recorder:
    """The ``register`` callable handed to every implementation of one hook call.

    One call through pluggy serves every plugin, so a registration is attributed to the plugin
    whose hook implementation is running: the nearest frame on the stack that belongs to one
    (two instances of one plugin class are told apart by their ``self``).
    """

    def __init__(self, kind: str, owners: dict[CodeType, list[tuple[object, str]]]) -> None:
        self.kind = kind
        self.owners = owners
        self.items: list[tuple[str, str, Any]] = []  # (plugin, name, object), in call order
        self.refused: list[tuple[str, str, str]] = []  # (plugin, name, reason)
        self.closed = False

    def _owner(self, frame: FrameType) -> str | None:
        entries = self.owners.get(frame.f_code)
        if not entries:
            return None
        if len(entries) > 1 and frame.f_code.co_argcount:
            first = frame.f_locals.get(frame.f_code.co_varnames[0])
            for instance, name in entries:
                if instance is first:
                    return name
        return entries[0][1]

    def _calling_plugin(self) -> str | None:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            owner = self._owner(frame)
            if owner is not None:
                return owner
            frame = frame.f_back
        return None

    def culprits(self, exc: BaseException) -> dict[str, BaseException]:
        """{plugin: exc} for the innermost hook implementation in the exception's traceback."""
        culprit = None
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            culprit = self._owner(tb.tb_frame) or culprit
            tb = tb.tb_next
        return {culprit: exc} if culprit is not None else {}

    def register(self, *args: Any, **kwargs: Any) -> None:
        hook = KINDS[self.kind]
        if self.closed:
            raise RuntimeError(f"the register() of {hook} was called after the hook returned")
        plugin = self._calling_plugin()
        if plugin is None:
            raise RuntimeError(
                f"the register() of {hook} was called from outside a hook implementation"
            )
        try:
            name, obj = check_registration(self.kind, plugin, args, kwargs)
        except Refused as e:
            self.refused.append((plugin, e.name, e.reason))
            return
        except TypeError as e:  # the call does not match register's signature
            raise TypeError(
                f"{hook}: bad register() call {_call_text(args, kwargs)}: {e}"
            ) from None
        self.items.append((plugin, name, obj))


def _call_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return f"({text if len(text) <= 80 else text[:77] + '...'})"


# -- the process-wide host ------------------------------------------------------------------------

_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide PluginHost, created (without loading anything yet) on first use."""
    global _host
    if _host is None:
        _host = PluginHost(_selection_from_env())
    return _host


def reset() -> None:
    """Drop the process-wide host: the next registry call reloads every plugin (and re-reads
    ``PYLLM_PLUGINS``). For tests, and after installing a plugin in-process."""
    global _host
    _host = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy PluginManager with every selected plugin loaded."""
    return get_host().pm


def tokenizers() -> dict[str, Any]:
    """name -> tokenizer factory ``factory(metadata, path) -> Tokenizer``."""
    return get_host().registry("tokenizers")


def samplers() -> dict[str, Any]:
    """name -> SamplerStep."""
    return get_host().registry("samplers")


def constraints() -> dict[str, Any]:
    """name -> constraint kind ``kind(spec) -> llguidance grammar``."""
    return get_host().registry("constraints")


def tasks() -> dict[str, TaskAdapter]:
    """name -> TaskAdapter."""
    return get_host().registry("tasks")


def model_sources() -> dict[str, ModelSource]:
    """name -> ModelSource, in registration order (built-ins first)."""
    return get_host().registry("model_sources")


def commands() -> dict[str, click.Command]:
    """name -> click command added by a plugin."""
    return get_host().registry("commands")


def repl_commands() -> dict[str, ReplCommand]:
    """name -> ReplCommand (name, handler, help, aliases, plugin)."""
    return get_host().registry("repl_commands")


def plugin_report() -> list[dict[str, Any]]:
    """Every plugin: name, distribution, version, module, builtin, registered {kind: [names]},
    error (None or a message)."""
    return get_host().report()


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` on the process-wide host for a ``with`` block (tests use this)."""
    with get_host().registered(plugin, name=name) as plugin_name:
        yield plugin_name
