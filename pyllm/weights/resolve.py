"""Model spec -> local path, through the registered model sources (plugins)."""

from __future__ import annotations

import os
from pathlib import Path

from pyllm.errors import PyllmError


class ModelNotFoundError(PyllmError, ValueError):
    """No model source could resolve a spec; the message lists what was tried."""


def resolve_model(spec: str | None, progress: bool = True) -> Path:
    """A local .gguf file or Hugging Face folder for `spec`.

    `spec` may be a path, a name (`smollm2`, or one `pyllm models` lists), an alias
    (`pyllm aliases`), a Hub repo id (`org/name`), or None / "" for the default model (the one
    `pyllm models default` set, else smollm2). The registered sources are asked in
    order; the first that recognises the spec resolves it (downloading when that source does).
    """
    from pyllm import plugins, settings
    from pyllm.weights.pull import DEFAULT_MODEL

    # An alias or the user's default model (`pyllm aliases`, `pyllm models default`) first.
    spec = settings.expand((spec or "").strip() or settings.default_model() or DEFAULT_MODEL.name)
    sources = plugins.model_sources()
    tried = []
    for name, source in sources.items():
        try:
            ok = source.can_resolve(spec)
        except Exception as e:  # noqa: BLE001 - a broken source must not hide the others
            tried.append(f"{name} (failed: {e})")
            continue
        if ok:
            return Path(source.resolve(spec, progress=progress))
        tried.append(name)
    if not sources:
        raise ModelNotFoundError(
            f"cannot resolve model {spec!r}: no model sources are registered (check PYLLM_PLUGINS)"
        )
    hint = ""
    looks_like_path = (
        os.sep in spec or spec.startswith(".") or spec.endswith((".gguf", ".safetensors", ".json"))
    )
    if looks_like_path and not Path(spec).expanduser().exists():
        hint = f"; no such file or folder: {spec}"
    elif Path(spec).expanduser().is_dir():
        hint = f"; {spec} is a folder without config.json"
    elif Path(spec).expanduser().is_file():
        hint = f"; {spec} is not a GGUF file"
    raise ModelNotFoundError(
        f"cannot resolve model {spec!r}: tried {', '.join(tried)}{hint}. "
        f"Give a .gguf file, a Hugging Face folder, a Hub id (org/name) or "
        f"a name from `pyllm models` (default: {DEFAULT_MODEL.name})"
    )
