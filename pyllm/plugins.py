"""The plugin manager: finds plugins through the ``pyllm`` entry-point group and collects what they
register.

Nothing is imported until a registry is first asked for (``tokenizers()``, ``commands()``...):
then every selected entry point is loaded, and each hook is called once per plugin, separately, so
that one plugin failing to import or raising inside a hook is reported once (a ``warning`` on the
``pyllm.plugins`` logger, which the CLI prints on stderr) and skipped while the rest keeps working.

The built-in plugins (``pyllm_tokenizers``, ``pyllm_samplers``, ``pyllm_tasks``, ``pyllm_sources``)
are entry points of the ``pyllm`` distribution itself and load first, so their names win over a
third-party plugin registering the same name.

``PYLLM_PLUGINS`` restricts which plugins load: a comma-separated list of entry-point names or
distribution names; ``builtin`` stands for every built-in plugin. Unset means all; an empty value
means none (pyllm then has no tokenizers). For example ``PYLLM_PLUGINS=builtin`` ignores every
third-party plugin, ``PYLLM_PLUGINS=builtin,pyllm-example`` adds one.

Tests add a plugin object for the duration of a ``with`` block::

    with pyllm.plugins.registered(MyPlugin()):
        assert "my_step" in pyllm.plugins.samplers()
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from pyllm import hookspecs
from pyllm.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from importlib.metadata import EntryPoint

    import click

__all__ = [
    "hookimpl",
    "PluginHost",
    "ReplCommand",
    "get_host",
    "get_plugin_manager",
    "tokenizers",
    "samplers",
    "constraints",
    "tasks",
    "model_sources",
    "commands",
    "repl_commands",
    "plugin_report",
    "registered",
    "reset",
]

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


@dataclass(frozen=True)
class ReplCommand:
    """A REPL slash command registered by a plugin."""

    name: str
    handler: Callable[..., Any]
    help: str
    aliases: tuple[str, ...] = ()
    plugin: str = ""


@dataclass
class PluginInfo:
    """What pyllm knows about one plugin (a row of ``pyllm plugins``)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    builtin: bool = False
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "registered": {k: list(v) for k, v in self.registered.items() if v},
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
        for ep in builtin + others:
            keys = self._selection_keys(ep)
            if self._selection is not None:
                hit = keys & self._selection
                if not hit:
                    continue
                matched |= hit
            self._load_one(pm, ep)
        if self._selection is not None:
            for name in sorted(self._selection - matched):
                self._warn(("selection", name),
                           f"{ENV_VAR} names {name!r} but no such plugin is installed")
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as e:
            self._warn(("pending", str(e)), f"plugin {e.plugin_name!r}: {e}")

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

    def _load_one(self, pm: pluggy.PluginManager, ep: EntryPoint) -> None:
        name = ep.name
        dist = self._dist_name(ep)
        if name in self._infos:  # two distributions use the same entry-point name
            name = f"{dist}:{ep.name}"
        info = PluginInfo(
            name=name,
            distribution=dist,
            version=ep.dist.version if getattr(ep, "dist", None) is not None else None,
            module=ep.value,
            builtin=self._is_builtin(ep),
        )
        self._infos[name] = info
        try:
            plugin = ep.load()
            pm.register(plugin, name=name)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop pyllm
            info.errors.append(f"failed to load: {_error_text(e)}")
            self._warn((name, "load"), f"plugin {name!r} failed to load and is skipped: "
                                       f"{_error_text(e)}")

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
        hook_name = KINDS[kind]
        caller = getattr(self.pm.hook, hook_name)
        result: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            plugin = impl.plugin_name
            items: list[tuple[str, Any]] = []
            register = _make_register(kind, plugin, items)
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as e:  # noqa: BLE001 - isolate the plugin, keep the others
                self._info(plugin).errors.append(f"{hook_name}: {_error_text(e)}")
                self._warn((plugin, hook_name),
                           f"plugin {plugin!r} raised in {hook_name} and is skipped for it: "
                           f"{_error_text(e)}")
                continue
            names = self._info(plugin).registered.setdefault(kind, [])
            names.clear()
            for name, obj in items:
                if name in result:
                    self._warn((plugin, f"{kind}:{name}"),
                               f"plugin {plugin!r} registers {kind[:-1].replace('_', ' ')} "
                               f"{name!r}, already registered by {owner[name]!r}; ignored")
                    continue
                result[name] = obj
                owner[name] = plugin
                names.append(name)
        return result

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


def _make_register(kind: str, plugin: str, items: list[tuple[str, Any]]) -> Callable[..., None]:
    """The ``register`` callable passed to a hook; checks its arguments, collects into ``items``."""

    def check_name(name: object) -> str:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"register() needs a non-empty name string, got {name!r}")
        return name

    if kind == "commands":

        def register_command(command: click.Command) -> None:
            import click

            if not isinstance(command, click.Command) or not command.name:
                raise TypeError(f"register() needs a named click.Command, got {command!r}")
            items.append((command.name, command))

        return register_command

    if kind == "repl_commands":

        def register_repl(name: str, handler: Callable[..., Any], help: str,
                          aliases: tuple[str, ...] = ()) -> None:
            name = check_name(name).lstrip("/")
            if not callable(handler):
                raise TypeError(f"register({name!r}, ...) needs a callable handler")
            aliases = tuple(a.lstrip("/") for a in aliases)
            items.append((name, ReplCommand(name, handler, str(help), aliases, plugin)))

        return register_repl

    def register(name: str, obj: Any) -> None:
        name = check_name(name)
        if (kind == "tokenizers" or kind == "samplers") and not callable(obj):
            raise TypeError(f"register({name!r}, ...) needs a callable, got {obj!r}")
        items.append((name, obj))

    return register


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


def tasks() -> dict[str, Any]:
    """name -> TaskAdapter."""
    return get_host().registry("tasks")


def model_sources() -> dict[str, Any]:
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
