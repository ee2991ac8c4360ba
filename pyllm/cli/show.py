"""`pyllm show MODEL`: what a model is, read from its file's metadata (nothing is loaded)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

# GGUF keys a file may carry with its author's suggested sampling (general.sampling.*).
_FILE_SAMPLING_PREFIX = "general.sampling."


@click.command(name="show")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as a JSON object.")
def show(model: str, as_json: bool) -> None:
    """Show MODEL's architecture, parameter count, quant types (with tensor counts), context
    length, chat template and the sampling settings `pyllm run` and `pyllm chat` use.

    MODEL is a .gguf file, a Hugging Face folder, or a name `pyllm models` lists (an hf.co name
    without a quant means its Q4_K_M file). Nothing is downloaded: pull the model first.
    """
    path = local_model(model)
    summary = gguf_summary(path) if path.is_file() else hf_folder_summary(path)
    summary = {"model": model, "path": str(path), **summary}
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    click.echo(render(summary))


def local_model(spec: str) -> Path:
    """The model's local file or folder, never downloading it."""
    from pyllm import settings
    from pyllm.weights import hub
    from pyllm.weights.pull import find_cached

    spec = settings.expand(spec.strip())
    p = Path(spec).expanduser()
    if p.exists():
        return p
    if hub.is_hub_gguf_name(spec):
        return hub.resolve_cached(hub.parse_name(spec))
    try:
        return Path(find_cached(spec)["path"])
    except ValueError as e:
        raise ValueError(
            f"{e}; `pyllm show` never downloads: pull the model first (`pyllm pull NAME`)"
        ) from None


def gguf_summary(path: Path) -> dict[str, Any]:
    from pyllm.weights.gguf import load_gguf

    g = load_gguf(path)
    md = g.metadata
    arch = md.get("general.architecture")
    census: Counter[str] = Counter(t.type_name.upper() for t in g.tensors.values())
    ctx = md.get(f"{arch}.context_length") if isinstance(arch, str) else None
    template = md.get("tokenizer.chat_template")
    suggested = {
        k[len(_FILE_SAMPLING_PREFIX) :]: _plain(v)
        for k, v in md.items()
        if k.startswith(_FILE_SAMPLING_PREFIX)
    }
    return {
        "format": "gguf",
        "name": md.get("general.name"),
        "architecture": arch,
        "parameters": sum(t.n_elements for t in g.tensors.values()),
        "quant_types": dict(census.most_common()),
        "context_length": int(ctx) if isinstance(ctx, int) else None,
        "chat_template": template if isinstance(template, str) else None,
        "sampling_defaults": _pyllm_sampling_defaults(),
        "sampling_suggested_by_file": suggested,
        "size": path.stat().st_size,
    }


def hf_folder_summary(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from pyllm.weights.safetensors import load_hf_config, read_json, safetensors_files

    config = load_hf_config(folder)
    census: Counter[str] = Counter()
    params = 0
    for f in safetensors_files(folder):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = st.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                params += n
                census[str(sl.get_dtype()).upper()] += 1
    template = None
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        template = read_json(tok_cfg).get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    gen = folder / "generation_config.json"
    suggested = {}
    if gen.is_file():
        suggested = {
            k: v
            for k, v in read_json(gen).items()
            if k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
        }
    archs = config.get("architectures") or []
    return {
        "format": "hf-folder",
        "name": config.get("_name_or_path") or folder.name,
        "architecture": config.get("model_type") or (archs[0] if archs else None),
        "parameters": params,
        "quant_types": dict(census.most_common()),
        "context_length": config.get("max_position_embeddings"),
        "chat_template": template if isinstance(template, str) else None,
        "sampling_defaults": _pyllm_sampling_defaults(),
        "sampling_suggested_by_file": suggested,
        "size": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
    }


def _pyllm_sampling_defaults() -> dict[str, Any]:
    from pyllm.cli.options import SAMPLING_DEFAULTS

    return dict(SAMPLING_DEFAULTS)


def _plain(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else v


def render(s: dict[str, Any]) -> str:
    """The summary as aligned `field: value` lines, the chat template last."""
    quants = ", ".join(
        f"{q} ({n} tensor{'s' if n != 1 else ''})" for q, n in s["quant_types"].items()
    )
    rows = [
        ("model", s["model"]),
        ("path", f"{s['path']} ({s['size'] / 1e6:.1f} MB)"),
        ("name", s["name"] or "-"),
        ("architecture", s["architecture"] or "unknown"),
        ("parameters", f"{_count(s['parameters'])} ({s['parameters']:,})"),
        ("quant types", quants or "-"),
        ("context length", s["context_length"] if s["context_length"] is not None else "unknown"),
        (
            "sampling",
            " ".join(f"{k}={v}" for k, v in s["sampling_defaults"].items())
            + "  (pyllm run/chat defaults)",
        ),
    ]
    if s["sampling_suggested_by_file"]:
        rows.append(
            (
                "file suggests",
                " ".join(f"{k}={v}" for k, v in s["sampling_suggested_by_file"].items())
                + "  (not applied: pass them as flags)",
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
    if s["chat_template"]:
        lines.append("chat template:")
        lines += ["    " + line for line in s["chat_template"].splitlines()]
    else:
        lines.append("chat template: none (pyllm's fallback template is used)")
    return "\n".join(lines)


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)
