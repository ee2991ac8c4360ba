"""GGUF models by name from the Hugging Face Hub: ``hf.co/ORG/REPO[:QUANT]``.

The naming ollama and llama.cpp use: the repository holds one GGUF file per quantization
(``SmolLM2-135M-Instruct-Q4_K_M.gguf``, ``...-Q8_0.gguf``); QUANT picks one (``Q4_K_M`` when
left out), matched case-insensitively as a whole part of the file name.

`pull_gguf` reads the repository's file listing with its LFS metadata (huggingface_hub's
``model_info(files_metadata=True)``, which honours ``HF_ENDPOINT``), picks the file, and
streams it from ``<endpoint>/ORG/REPO/resolve/<commit>/<file>`` with our own progress bar,
hashing as it goes. The sha256 must equal the one the Hub lists for the file (its LFS object
id); a file kept in git instead of LFS is checked against its git blob id. Like the default
pull (pyllm/weights/pull.py) it is atomic: bytes go to a ``.part`` file beside the destination,
fsync'ed, checked, then renamed, with a sidecar recording the hash. Unlike it, it resumes: the
``.part`` file of a killed or interrupted download is kept, and the next pull asks only for the
missing bytes (an HTTP Range request) after hashing what is there.

Files live in ``<home>/models/hf.co/ORG/REPO/<file>.gguf``. Nothing is downloaded except by
an explicit ``pyllm pull hf.co/...``; running such a name uses the cached file, or says to pull
it. ``PYLLM_OFFLINE=1`` forbids the pull too.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pyllm.weights import pull

DEFAULT_QUANT = "Q4_K_M"
# (https://huggingface.co/ORG/NAME stays a safetensors repository: the hf-hub source's form.)
HOST_PREFIXES = ("hf.co/", "huggingface.co/", "https://hf.co/")
_PART = re.compile(r"^[A-Za-z0-9][\w.-]*$")
USER_AGENT = "pyllm-pull"
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubGGUFName:
    """``hf.co/ORG/REPO:QUANT``, parsed."""

    org: str
    repo: str
    quant: str

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.repo}"

    @property
    def name(self) -> str:
        """The canonical name: what `pyllm models` lists."""
        return f"{pull.HUB_GGUF_DIR}/{self.org}/{self.repo}:{self.quant}"

    def folder(self) -> Path:
        return pull.models_dir() / pull.HUB_GGUF_DIR / self.org / self.repo


@dataclass(frozen=True)
class HubFile:
    """One file of a repository's listing."""

    path: str  # in the repository
    size: int | None
    sha256: str | None  # the LFS object id; None for a file kept in git
    blob_id: str | None  # the git blob id (sha1)


class HubNameError(pull.PullError, ValueError):
    """A malformed hf.co name, or a quant the repository does not have."""


def is_hub_gguf_name(spec: str) -> bool:
    return spec.strip().lower().startswith(HOST_PREFIXES)


def parse_name(spec: str) -> HubGGUFName:
    """``hf.co/ORG/REPO[:QUANT]`` (also huggingface.co/... and https://hf.co/...);
    HubNameError saying what is wrong otherwise."""
    s = spec.strip()
    rest = next((s[len(p) :] for p in HOST_PREFIXES if s.lower().startswith(p)), None)
    if rest is None:
        raise HubNameError(f"{spec!r} is not an hf.co name (hf.co/ORG/REPO[:QUANT])")
    path, _, quant = rest.partition(":")
    parts = path.strip("/").split("/")
    if len(parts) != 2 or not all(_PART.match(p) for p in parts):
        raise HubNameError(
            f"{spec!r}: expected hf.co/ORG/REPO[:QUANT] (ORG and REPO are letters, "
            f"digits, '-', '_' and '.')"
        )
    if quant and not _PART.match(quant):
        raise HubNameError(f"{spec!r}: the quant {quant!r} is not a quant type such as Q4_K_M")
    if not quant or quant.lower() == "latest":
        quant = DEFAULT_QUANT
    return HubGGUFName(parts[0], parts[1], quant.upper())


def endpoint() -> str:
    """$HF_ENDPOINT (as huggingface_hub reads it), default https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# ------------------------------------------------------------------ the listing


def list_files(name: HubGGUFName) -> tuple[str, list[HubFile]]:
    """(commit, files) of the repository, with their sizes and hashes."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:  # pragma: no cover - a core dependency
        raise pull.PullError(
            "pulling from the Hugging Face Hub needs the huggingface_hub "
            "package (pip install huggingface_hub)"
        ) from e
    try:
        info = HfApi(endpoint=endpoint()).model_info(name.repo_id, files_metadata=True)
    except Exception as e:
        raise pull.PullError(
            f"cannot list the files of {name.repo_id} on {endpoint()}: {_one_line(e)}"
        ) from e
    files = []
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files.append(
            HubFile(s.rfilename, getattr(s, "size", None), sha, getattr(s, "blob_id", None))
        )
    if not info.sha:
        raise pull.PullError(f"{name.repo_id}: the Hub gave no commit for the repository")
    return str(info.sha), files


def pick_file(name: HubGGUFName, files: list[HubFile]) -> HubFile:
    """The GGUF file of the wanted quant: its name holds the quant as a whole part
    (``-Q4_K_M.gguf``, ``.q4_k_m.gguf``), case-insensitively; projector (mmproj) files are
    skipped. HubNameError listing the quants there are when none or several match."""
    ggufs = [
        f
        for f in files
        if f.path.lower().endswith(".gguf") and not Path(f.path).name.lower().startswith("mmproj")
    ]
    if not ggufs:
        raise HubNameError(f"{name.repo_id} has no .gguf files")
    want = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name.quant)}(?![A-Za-z0-9_])", re.IGNORECASE)
    hits = [f for f in ggufs if want.search(Path(f.path).name[: -len(".gguf")])]
    if not hits:
        raise HubNameError(
            f"{name.repo_id} has no {name.quant} GGUF file; it has: "
            f"{', '.join(sorted(quants_in(ggufs))) or 'none recognised'} "
            f"(files: {', '.join(f.path for f in ggufs[:8])})"
        )
    if len(hits) > 1:
        split = [f for f in hits if re.search(r"-\d{5}-of-\d{5}\.gguf$", f.path, re.IGNORECASE)]
        if split:
            raise HubNameError(
                f"{name.repo_id}: the {name.quant} model is split into "
                f"{len(split)} files, which pyllm does not load"
            )
        raise HubNameError(
            f"{name.repo_id}: several {name.quant} files match: {', '.join(f.path for f in hits)}"
        )
    return hits[0]


_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


def quants_in(files: list[HubFile]) -> set[str]:
    """The quant types the file names mention."""
    out = set()
    for f in files:
        m = _QUANT_IN_NAME.findall(Path(f.path).name[: -len(".gguf")])
        if m:
            out.add(m[-1].upper())
    return out


# ------------------------------------------------------------------ the cache


def cached_path(name: HubGGUFName) -> Path | None:
    """The cached file for this name (the quant compared case-insensitively), if pulled."""
    folder = name.folder()
    if not folder.is_dir():
        return None
    for entry in pull.cached_models():
        if entry["type"] == "gguf" and entry["name"].lower() == name.name.lower():
            return Path(entry["path"])
    return None


def resolve_cached(name: HubGGUFName) -> Path:
    """The cached file, checked against its recorded sha256; PullError saying to pull it when
    it is not there (running a name never downloads)."""
    path = cached_path(name)
    if path is None:
        raise pull.PullError(
            f"{name.name} is not in {pull.models_dir()}: run "
            f"`pyllm pull {name.name}` first (pyllm downloads only when asked to)"
        )
    sha = pull.recorded_sha256(path)
    if sha is None or not pull.check_cached(path, sha, None, name.name):
        raise pull.DamagedModelError(f"{path}: {pull.damaged_message(name.name)}")
    return path


# ------------------------------------------------------------------ the pull


def pull_gguf(spec: str, *, progress: bool = True, force: bool = False) -> tuple[Path, bool]:
    """Pull ``hf.co/ORG/REPO[:QUANT]`` into the cache: (path, whether it was downloaded).

    An intact cached file is kept unless `force`; a damaged one is replaced."""
    name = parse_name(spec)
    path = cached_path(name)
    if path is not None and not force:
        sha = pull.recorded_sha256(path)
        with contextlib.suppress(pull.DamagedModelError):
            if sha is not None and pull.check_cached(path, sha, None, name.name):
                return path, False
    folder = name.folder()
    pull.check_can_download(name.name, folder)
    commit, files = list_files(name)
    f = pick_file(name, files)
    dest = folder / Path(f.path).name
    with pull._lock(folder / ".pull.lock"):
        if not force and f.sha256 and pull.sidecar_matches(dest, f.sha256):
            return dest, False  # another process pulled it while we waited
        url = f"{endpoint()}/{name.repo_id}/resolve/{commit}/{urllib.parse.quote(f.path)}"
        part = folder / f".{dest.name}.{(f.sha256 or f.blob_id or 'nohash')[:16]}{pull.PART_SUFFIX}"
        _download_resumable(url, part, f, progress=progress)
        os.chmod(part, 0o666 & ~pull._umask())
        os.replace(part, dest)
        pull._fsync_dir(folder)
        if path is not None and path != dest:  # the same name pointed at another file before
            remove_file(path)
        pull.write_sidecar(
            dest,
            f.sha256 or pull.hash_file(dest),
            {
                "model": name.name,
                "source": f"{endpoint()}/{name.repo_id}",
                "revision": commit,
                "file": f.path,
            },
        )
    return dest, True


def _download_resumable(url: str, part: Path, f: HubFile, *, progress: bool) -> None:
    """Fill `part` with the file, resuming what an earlier attempt left; PullError (the part
    removed) when the result is not the file the listing describes."""
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    digests = _Digests(f)
    with open(part, "ab+") as out:
        if have:
            out.seek(0)
            for chunk in iter(lambda: out.read(pull.CHUNK), b""):
                digests.update(chunk)
        if f.size is None or have < f.size:
            have = _fetch(url, out, have, f, digests, progress)
        out.flush()
        os.fsync(out.fileno())
    problem = None
    if f.size is not None and have != f.size:
        problem = f"{have} bytes where the listing says {f.size}"
    elif f.sha256 is not None and digests.sha256.hexdigest() != f.sha256:
        problem = f"sha256 {digests.sha256.hexdigest()} does not match the Hub's {f.sha256}"
    elif digests.blob is not None and f.blob_id and digests.blob.hexdigest() != f.blob_id:
        problem = f"git blob id {digests.blob.hexdigest()} does not match the Hub's {f.blob_id}"
    if problem:
        part.unlink(missing_ok=True)
        raise pull.PullError(f"{f.path} from {url}: {problem}; nothing was kept")


class _Digests:
    """The sha256 of the bytes, and their git blob id when that is what the Hub lists (a file
    kept in git, not LFS: sha1 of "blob SIZE", a NUL byte and the bytes)."""

    def __init__(self, f: HubFile) -> None:
        self.file = f
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        f = self.file
        self.blob = (
            hashlib.sha1(f"blob {f.size}\0".encode())
            if f.sha256 is None and f.size is not None
            else None
        )

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.blob is not None:
            self.blob.update(chunk)


def _fetch(
    url: str, out: IO[bytes], have: int, f: HubFile, digests: _Digests, progress: bool
) -> int:
    """Append the bytes from `have` on; returns the size now in `out`."""
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            if have and r.status != 206:  # the server sends it all again: start over
                out.seek(0)
                out.truncate()
                digests.reset()
                have = 0
            with pull._bar(progress, Path(f.path).name, f.size) as bar:
                bar.update(have)
                read = getattr(r, "read1", r.read)  # what has arrived, so a kill keeps it
                for chunk in iter(lambda: read(pull.CHUNK), b""):
                    out.write(chunk)
                    digests.update(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
            if f.size is not None and have < f.size:  # read1 ends quietly on a dropped link
                raise http.client.IncompleteRead(b"", f.size - have)
    except urllib.error.HTTPError as e:
        if e.code == 416 and f.size is not None and have == f.size:
            return have  # everything was there already
        raise pull.PullError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        out.flush()
        raise pull.PullError(
            f"download of {url} was interrupted ({_one_line(e)}); {have} of "
            f"{f.size if f.size is not None else '?'} bytes are kept: pull "
            f"again to resume"
        ) from e
    return have


def remove_file(path: Path) -> None:
    """Remove a cached GGUF file with its sidecar, and its hf.co folders once empty."""
    path.unlink(missing_ok=True)
    pull._sidecar(path).unlink(missing_ok=True)
    root = pull.models_dir() / pull.HUB_GGUF_DIR
    d = path.parent
    while d != root and root in d.parents:
        with contextlib.suppress(OSError):
            (d / ".pull.lock").unlink(missing_ok=True)
            if any(p.name.endswith(pull.PART_SUFFIX) for p in d.iterdir()):
                break
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
