"""The user's model settings, kept in ``$PYLLM_HOME/settings.json``: the default model (what a
command uses when none is named) and model aliases (short names for a model spec).

    {"default_model": "qwen", "aliases": {"qwen": "~/models/qwen2.5-0.5b.gguf"}}

``pyllm models default NAME`` and ``pyllm aliases set NAME MODEL`` write it; every model spec goes
through :func:`expand` before the model sources see it (pyllm.weights.resolve). The file is
rewritten whole and atomically (a temporary file, then a rename), so a reader never sees half of
it. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pyllm.errors import PyllmError

FILENAME = "settings.json"
# An alias is a plain name: no path separators or spaces, so it can never hide a file path or a
# Hub id (org/name).
_ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


class SettingsError(PyllmError, ValueError):
    """A bad settings file or a bad value for one of its entries."""


def settings_path() -> Path:
    from pyllm.weights.pull import pyllm_home

    return Path(pyllm_home()) / FILENAME


def load() -> dict[str, Any]:
    """The settings as stored ({} when there is no file yet)."""
    path = settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or delete the file"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def save(data: dict[str, Any]) -> Path:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".settings.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------ the default model


def default_model() -> str | None:
    """The model set with ``pyllm models default``, or None (then pyllm's own default)."""
    value = load().get("default_model")
    return value if isinstance(value, str) and value.strip() else None


def set_default_model(spec: str | None) -> Path:
    """Store `spec` as the default model (None or "" forgets it)."""
    data = load()
    if spec is None or not spec.strip():
        data.pop("default_model", None)
    else:
        data["default_model"] = spec.strip()
    return save(data)


# ------------------------------------------------------------------ aliases


def aliases() -> dict[str, str]:
    value = load().get("aliases") or {}
    if not isinstance(value, dict):
        raise SettingsError(f"{settings_path()}: 'aliases' must be an object of name -> model")
    return {str(k): str(v) for k, v in value.items()}


def check_alias_name(name: str) -> str:
    name = name.strip()
    if not _ALIAS_NAME.match(name):
        raise SettingsError(
            f"alias name {name!r} must start with a letter or digit and hold no "
            f"spaces or slashes (so it cannot be mistaken for a path or a Hub id)"
        )
    return name


def set_alias(name: str, model: str) -> Path:
    name = check_alias_name(name)
    model = model.strip()
    if not model:
        raise SettingsError(f"alias {name!r}: the model is empty")
    if model == name:
        raise SettingsError(f"alias {name!r} cannot point at itself")
    data = load()
    table = dict(aliases())
    table[name] = model
    data["aliases"] = dict(sorted(table.items()))
    return save(data)


def remove_alias(name: str) -> bool:
    """Forget an alias; False when there was none by that name."""
    data = load()
    table = dict(aliases())
    if name not in table:
        return False
    del table[name]
    data["aliases"] = table
    save(data)
    return True


def expand(spec: str) -> str:
    """The model spec an alias stands for (aliases may name other aliases; a loop is an error);
    any other spec unchanged."""
    table = aliases() if settings_path().is_file() else {}
    seen = [spec]
    while spec in table:
        spec = table[spec]
        if spec in seen:
            raise SettingsError(f"aliases loop: {' -> '.join([*seen, spec])}")
        seen.append(spec)
    return spec


def model_spec(spec: str | None) -> str:
    """The spec a command's model comes from: `spec`, else the default model's (as logged, so
    that `--continue` loads the same one)."""
    from pyllm.weights.pull import DEFAULT_MODEL

    return (spec or "").strip() or default_model() or DEFAULT_MODEL.name
